"""What `privflow schema draft` learns of each column of an export, a batch at a time.

Each batch of a column is read as one Arrow array, with validation's own readers: a number is
what coercion reads as one (decimal and digit-group marks as the dataset declares them), a date
what it reads as one. So the draft proposes what validation then accepts, and a 100-million-row
export is profiled in C++ kernels, not in a Python loop over its values (which read about 45,000
records a second here). Memory is bounded by the batch, but for 8 bytes per value of a column
whose values have not repeated yet (the uniqueness of an id).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from privflow.data.coercion import formatted_times, iso_times, marked_numbers
from privflow.data.records import RecordReader, first_header
from privflow.data.schema import DEFAULT_FALSE, DEFAULT_TRUE, INTEGER_TYPES, ColumnSpec, DatasetSchema
from privflow.data.sources import disk_members, list_source

MAX_ALLOWED = 20         # a column with at most this many distinct values gets a candidate `allowed:`
MAX_DEFECTS = 0.05       # share of a column's values that may fail its drafted type: defects to quarantine
TEXT_MIN_WORDS = 4       # free text: mean words a value
TEXT_MAX_MISSING = 0.05  # share of records without one: an optional note stays a string column
DRAFT_MAX_CHARS = 2000   # declared, not measured: the longest text's length is the owner's to set
NUMBERS = (*INTEGER_TYPES, "float")
# dates as spreadsheets and other locales write them; ISO 8601 needs no `format:` (the default)
ISO_FORMATS = ("%Y-%m-%d", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S")
TIME_FORMATS = (*ISO_FORMATS, *(day + time for day in ("%d.%m.%Y", "%d/%m/%Y", "%m/%d/%Y", "%d-%m-%Y", "%Y/%m/%d")
                                for time in ("", " %H:%M", " %H:%M:%S")))
_ISO_START = r"^\d{4}-\d{2}-\d{2}"  # an ISO date or time begins so: other columns skip its parser
_BOOLS = pa.array(DEFAULT_TRUE + DEFAULT_FALSE)


@dataclass
class ColumnProfile:
    """What the draft needs to know of one column."""

    decimal: str = "."
    thousands: str | None = None
    missing: int = 0
    present: int = 0
    words: int = 0              # words over every value: free text has several a value
    over_draft_chars: int = 0   # values longer than DRAFT_MAX_CHARS: quarantined under the drafted max_chars
    distinct: set[str] | None = field(default_factory=set)  # None once past MAX_ALLOWED
    repeated: bool = False
    # every value's 64-bit hash, 8 bytes each, until one repeats: a set of Python ints held ~70 bytes
    # a value, several GB for the id column of a 100-million-row export
    hashes: list[np.ndarray] = field(default_factory=list)
    not_numbers: int = 0        # values that are not numbers: a few in a numeric column are defects
    number_kinds: set[str] = field(default_factory=lambda: set(NUMBERS))  # what every value that is a number fits
    kinds: set[str] = field(default_factory=lambda: {"bool", "date", "datetime"})  # what every value fits
    not_times: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIME_FORMATS, 0))  # format: values not read

    def add(self, values: pa.Array) -> None:
        """One batch of the column, as text (null where a Parquet value is null)."""
        trimmed = pc.utf8_trim_whitespace(values)
        present = pc.drop_null(pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed))
        self.missing += len(values) - len(present)
        self.present += len(present)
        if not len(present):
            return
        self.words += pc.sum(pc.list_value_length(pc.utf8_split_whitespace(present))).as_py()
        self.over_draft_chars += pc.sum(pc.greater(pc.utf8_length(present), DRAFT_MAX_CHARS)).as_py()
        unique = pc.unique(present)
        self._add_distinct(unique)
        self._add_hashes(present, repeats=len(unique) < len(present))
        is_number = self._add_numbers(present)
        self._add_kinds(present)
        self._add_times(present, is_number)

    def _add_distinct(self, unique: pa.Array) -> None:
        if self.distinct is not None:
            self.distinct = None if len(unique) > MAX_ALLOWED else self.distinct | set(unique.to_pylist())
            if self.distinct is not None and len(self.distinct) > MAX_ALLOWED:
                self.distinct = None

    def _add_hashes(self, present: pa.Array, repeats: bool) -> None:
        if self.repeated or repeats:  # a repeat within the batch needs no hash
            self.repeated, self.hashes = True, []
            return
        keys = np.unique(pd.util.hash_array(present.to_numpy(zero_copy_only=False)))
        self.repeated = len(keys) < len(present)
        self.hashes = [] if self.repeated else [*self.hashes, keys]

    def finish(self) -> None:
        """Whether a value repeats across batches, once every batch is in."""
        if not self.repeated and len(self.hashes) > 1:
            every = np.concatenate(self.hashes)
            self.repeated = len(np.unique(every)) < len(every)
        self.hashes = []

    def _add_numbers(self, present: pa.Array) -> np.ndarray:
        """Numbers as validation reads them; the numeric types every one of them fits. Returns which values are."""
        numbers, bad = marked_numbers(present, self.decimal, self.thousands)
        is_number = np.isfinite(numbers) & ~bad
        self.not_numbers += int((~is_number).sum())
        numbers = numbers[is_number]
        whole = bool(np.all(numbers == np.floor(numbers)))
        for kind in INTEGER_TYPES:
            info = np.iinfo(kind)
            if not (whole and np.all((numbers >= info.min) & (numbers <= info.max))):
                self.number_kinds.discard(kind)
        return is_number

    def _add_kinds(self, present: pa.Array) -> None:
        """Bool and ISO date kinds: each stays while every value fits it."""
        if "bool" in self.kinds and not (pc.all(pc.is_in(pc.utf8_lower(present), _BOOLS)).as_py()
                                         and not pc.any(pc.is_in(present, pa.array(["0", "1"]))).as_py()):
            self.kinds.discard("bool")  # 0 and 1 are numbers first
        if self.kinds & {"date", "datetime"} and not pc.all(pc.match_substring_regex(present, _ISO_START)).as_py():
            self.kinds -= {"date", "datetime"}
        for kind in ("date", "datetime"):
            if kind in self.kinds and pc.count(iso_times(present, kind)).as_py() < len(present):
                self.kinds.discard(kind)
        if "date" in self.kinds and pc.max(pc.utf8_length(present)).as_py() > 10:
            self.kinds.discard("date")  # a time of day, even midnight: a datetime column

    def _add_times(self, present: pa.Array, is_number: np.ndarray) -> None:
        """Count, for each date format still in the running, the values it does not read. Only values
        that begin with a digit and are not numbers are parsed: no format reads the others."""
        candidates = present.filter(pa.array(~is_number))
        candidates = candidates.filter(pc.match_substring_regex(candidates, r"^\d"))
        unread = len(present) - len(candidates)
        for fmt in list(self.not_times):
            if self.not_times[fmt] + unread > MAX_DEFECTS * self.present:
                del self.not_times[fmt]
                continue
            self.not_times[fmt] += unread + len(candidates) - pc.count(formatted_times(candidates, fmt)).as_py()
            if self.not_times[fmt] > MAX_DEFECTS * self.present:  # out of the running: never tried again
                del self.not_times[fmt]

    @property
    def number_with_defects(self) -> str | None:
        """The numeric type of a column whose values are numbers but a few defects (an age typed "abc")."""
        if not 0 < self.not_numbers <= MAX_DEFECTS * self.present:
            return None
        return next((kind for kind in NUMBERS if kind in self.number_kinds), None)

    @property
    def time_format(self) -> str | None:
        """The date format most values are written in (ISO formats first), if a few defects at most fail it."""
        if not self.present or self.kinds or not self.not_numbers:
            return None
        fits = [fmt for fmt in self.not_times if self.not_times[fmt] < self.present]
        return min(fits, key=self.not_times.get, default=None)

    @property
    def type(self) -> str:
        """The narrowest type every value fits, or a date format most do; else text or string."""
        if self.present and "bool" in self.kinds:
            return "bool"
        if self.present and not self.not_numbers:
            return next(kind for kind in NUMBERS if kind in self.number_kinds)
        for kind in ("date", "datetime"):
            if self.present and kind in self.kinds:
                return kind
        if self.time_format is not None:
            return "datetime" if "%H" in self.time_format else "date"
        free_text = (self.distinct is None and self.words >= TEXT_MIN_WORDS * self.present
                     and self.missing <= TEXT_MAX_MISSING * (self.present + self.missing))
        return "text" if free_text else "string"


def profile_source(source: Path, ingest) -> tuple[list[str], dict[str, ColumnProfile], int]:
    """The header, a profile per column, and the record count."""
    header = first_header(source, ingest)
    everything = DatasetSchema.model_construct(
        dataset="draft", privacy_unit=header[0], target=header[0], strict=False,
        columns={name: ColumnSpec.model_construct(type="string") for name in header})
    reader = RecordReader.of(str(source), everything, ingest)
    profiles = {name: ColumnProfile(decimal=ingest.decimal, thousands=ingest.thousands) for name in header}
    for batch in reader.batches(disk_members(list_source(source))):
        for name in header:
            profiles[name].add(pc.cast(batch.columns.column(name), "string").combine_chunks())
    for profile in profiles.values():
        profile.finish()
    return header, profiles, reader.rows_in

