"""`privflow schema draft SOURCE`: a first schema for the data owner, read from the data.

The data owner may see the data, so this reads it: each column's type (the narrowest that
every value fits), whether values are missing, whether they are all distinct, a candidate
person-id column and candidate `allowed:` lists for columns with few values. It does not
write `min:`/`max:`: bounds measured on the rows would put private extremes into the
schema, outside the DP guarantee, so the owner declares them from domain knowledge (the
draft says so, and privflow refuses to train until they are there). Nothing is written
anywhere but the draft file the owner asks for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from privflow.data.coercion import formatted_times
from privflow.data.records import RecordReader
from privflow.data.schema import DEFAULT_FALSE, DEFAULT_TRUE, INTEGER_TYPES, ColumnSpec, DatasetSchema
from privflow.data.sources import disk_members, list_source
from privflow.errors import DatasetError

MAX_ALLOWED = 20        # a column with at most this many distinct values gets a candidate `allowed:`
_PERSON_NAME = re.compile(r"^(patient|customer|person|user|employee|member|client|student|citizen)", re.I)
_ID_NAME = re.compile(r"(^|_)(id|key|number|no)$|" + _PERSON_NAME.pattern, re.I)
_TARGET_NAME = re.compile(r"(target|label|outcome|class|result|churn|churned|diagnosis|^y)$", re.I)
_TIME_KINDS = ("date", "datetime")
NUMBERS = (*INTEGER_TYPES, "float")
# free text: most records have one, of several words (a note, a ticket, a review), mostly distinct
TEXT_MIN_WORDS = 4       # mean words a value
TEXT_MAX_MISSING = 0.05  # share of records without one: an optional note stays a string column
DRAFT_MAX_CHARS = 2000   # declared, not measured: the longest text's length is the owner's to set
MAX_DEFECTS = 0.05       # share of a column's values that may fail its drafted type: defects to quarantine
# dates as spreadsheets and other locales write them; ISO 8601 needs no `format:` (the default)
_ISO_FORMATS = ("%Y-%m-%d", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S")
TIME_FORMATS = (*_ISO_FORMATS, *(day + time for day in ("%d.%m.%Y", "%d/%m/%Y", "%m/%d/%Y", "%d-%m-%Y", "%Y/%m/%d")
                                 for time in ("", " %H:%M", " %H:%M:%S")))


@dataclass
class _ColumnProfile:
    """What the draft needs to know of one column, gathered a batch at a time."""

    kinds: set[str] = field(default_factory=lambda: {"bool", *INTEGER_TYPES, "float", "date", "datetime"})
    missing: int = 0
    present: int = 0
    distinct: set[str] | None = field(default_factory=set)  # None once past MAX_ALLOWED
    # every value's 64-bit hash, 8 bytes each, until one repeats: a set of Python ints held ~70 bytes
    # a value, several GB for the id column of a 100-million-row export
    hashes: list[np.ndarray] = field(default_factory=list)
    repeated: bool = False
    decimal: str = "."
    thousands: str | None = None
    not_numbers: int = 0  # values that are not numbers: a few in a numeric column are defects
    number_kinds: set[str] = field(default_factory=lambda: set(NUMBERS))  # what every value that is a number fits
    words: int = 0        # words over every value: free text has several a value
    over_draft_chars: int = 0  # values longer than DRAFT_MAX_CHARS: quarantined under the drafted max_chars
    not_times: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIME_FORMATS, 0))  # format: values not read

    def add(self, values: list[str | None]) -> None:
        keys = []
        for value in values:
            text = (value or "").strip()
            if not text:
                self.missing += 1
                continue
            self.present += 1
            self.words += len(text.split())
            self.over_draft_chars += len(text) > DRAFT_MAX_CHARS
            keys.append(hash(text))
            if self.distinct is not None:
                self.distinct.add(text)
                if len(self.distinct) > MAX_ALLOWED:
                    self.distinct = None
            number = _plain_number(text, self.decimal, self.thousands)
            if _fits(number, "float"):
                self.number_kinds -= {kind for kind in self.number_kinds if not _fits(number, kind)}
            else:
                self.not_numbers += 1
            self.kinds -= {kind for kind in self.kinds if not _fits(number if kind in NUMBERS else text, kind)}
        if not self.repeated:
            batch = np.unique(np.array(keys, dtype=np.int64))
            self.repeated = len(batch) < len(keys)
            self.hashes = [] if self.repeated else [*self.hashes, batch]

    def finish(self) -> None:
        """Whether a value repeats across batches, once every batch is in."""
        if not self.repeated and len(self.hashes) > 1:
            every = np.concatenate(self.hashes)
            self.repeated = len(np.unique(every)) < len(every)
        self.hashes = []

    def add_times(self, values: pa.Array) -> None:
        """Count, for each date format still in the running, the present values it does not read
        (Arrow's parser, vectorised, with coercion's check against rolled-over dates)."""
        present = pc.drop_null(pc.if_else(pc.equal(pc.utf8_trim_whitespace(values), ""), None, values))
        for fmt in list(self.not_times):
            self.not_times[fmt] += len(present) - pc.count(formatted_times(present, fmt)).as_py()
            if self.not_times[fmt] > MAX_DEFECTS * self.present:  # out of the running: never tried again
                del self.not_times[fmt]

    @property
    def number_with_defects(self) -> str | None:
        """The numeric type of a column whose values are numbers but a few defects (an age typed "abc")."""
        if not 0 < self.not_numbers <= MAX_DEFECTS * self.present:
            return None
        return next((kind for kind in (*INTEGER_TYPES, "float") if kind in self.number_kinds), None)

    @property
    def time_format(self) -> str | None:
        """The date format most values are written in (ISO formats first), if a few defects at most fail it."""
        if not self.present or any(kind in self.kinds for kind in ("bool", *NUMBERS, "date", "datetime")):
            return None
        fits = [fmt for fmt in self.not_times if self.not_times[fmt] < self.present]
        return min(fits, key=self.not_times.get, default=None)

    @property
    def type(self) -> str:
        for kind in ("bool", *INTEGER_TYPES, "float", "date", "datetime"):
            if kind in self.kinds and self.present:
                return kind
        if self.time_format is not None:
            return "datetime" if "%H" in self.time_format else "date"
        free_text = (self.distinct is None and self.words >= TEXT_MIN_WORDS * self.present
                     and self.missing <= TEXT_MAX_MISSING * (self.present + self.missing))
        return "text" if free_text else "string"


def _fits(text: str, kind: str) -> bool:
    if kind == "bool":
        return text.lower() in DEFAULT_TRUE + DEFAULT_FALSE and text not in ("0", "1")
    if kind in INTEGER_TYPES:
        bits = int(kind.removeprefix("int"))
        return re.fullmatch(r"[+-]?\d+", text) is not None and -(2 ** (bits - 1)) <= int(text) < 2 ** (bits - 1)
    if kind == "float":
        try:
            float(text)
            return True
        except ValueError:
            return False
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return False
    return kind == "datetime" or (len(text) <= 10 and parsed.time() == datetime.min.time())


def _plain_number(text: str, decimal: str, thousands: str | None) -> str:
    """A number as Python reads it, as validation would take it (4.157,45 -> 4157.45); "" (no
    number) for what validation would refuse: a mark out of place, 4.157 in a decimal-comma file."""
    if thousands and thousands in text:
        if not re.fullmatch(rf"[+-]?\d{{1,3}}({re.escape(thousands)}\d{{3}})+({re.escape(decimal)}\d*)?", text):
            return ""
        text = text.replace(thousands, "")
    if decimal == ",":
        return "" if "." in text else text.replace(",", ".")
    return text


def profile_source(source: Path, ingest) -> tuple[list[str], dict[str, _ColumnProfile], int]:
    """The header, a profile per column, and the record count."""
    header, _ = _header(source, ingest)
    everything = DatasetSchema.model_construct(
        dataset="draft", privacy_unit=header[0], target=header[0], strict=False,
        columns={name: ColumnSpec.model_construct(type="string") for name in header})
    reader = RecordReader.of(str(source), everything, ingest)
    profiles = {name: _ColumnProfile(decimal=ingest.decimal, thousands=ingest.thousands) for name in header}
    for batch in reader.batches(disk_members(list_source(source))):
        for name in header:
            values = pc.cast(batch.columns.column(name), "string")
            profiles[name].add(values.to_pylist())
            profiles[name].add_times(values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values)
    for profile in profiles.values():
        profile.finish()
    return header, profiles, reader.rows_in


def _header(source: Path, ingest) -> tuple[list[str], int]:
    from privflow.data.records import describe_source

    return describe_source(disk_members(list_source(source)), str(source), delimiter=ingest.delimiter,
                           encoding=ingest.encoding)


def _yaml_value(value: str, kind: str) -> str:
    if kind in INTEGER_TYPES or kind == "float":
        return value
    return "'" + value.replace("'", "''") + "'"


def draft_schema(source: Path, ingest, dataset: str, ingest_line: str = "") -> str:
    """The draft as commented YAML text; `ingest_line`: the dataset's `ingest:` override it was read with."""
    header, profiles, rows = profile_source(source, ingest)
    if not rows:  # types, ids and categories drafted from nothing would all be wrong
        raise DatasetError(f"{source}: no records, only the header line; draft from an export that has rows")
    unit, unit_comment = _privacy_unit(header, profiles)
    few = [n for n in header if n != unit and profiles[n].distinct and 2 <= len(profiles[n].distinct) <= MAX_ALLOWED
           and profiles[n].type not in _TIME_KINDS]
    target = next((n for n in few if _TARGET_NAME.search(n)), few[-1] if few else header[-1])
    others = [n for n in few if n != target]
    lines = [
        f"# Draft schema for {dataset}, read from {source} ({rows} records) by `privflow schema draft`.",
        "# Check every line: types and candidate `allowed:` lists come from the rows you have now.",
        "# min/max are left for you to declare from domain knowledge (an age is 0..120, a rate 0..1):",
        "# bounds measured on the rows would leak private extremes outside the privacy guarantee,",
        "# so privflow scales features by declared bounds only and refuses to train until they are set.",
        *([f"# Read with `{ingest_line}`: put the same in the dataset's entry in params.yaml."] if ingest_line else []),
        f"dataset: {dataset}",
        f"privacy_unit: {unit}    # {unit_comment}",
        f"target: {target}    # candidate: a column with few values; the class order is its allowed list"
        + (f" (others: {', '.join(others)})" if others else ""),
        "strict: true",
        "columns:",
    ]
    for name in header:
        spec, comment = _column_line(profiles[name], name in (unit, target))
        if name in (unit, target) and profiles[name].missing:  # never nullable: such rows are quarantined
            spec = spec.replace(", nullable: true", "")
            comment = f"{profiles[name].missing} record(s) have no value: validation will quarantine them"
        lines.append(f"  {name}: {{{spec}}}" + (f"    # {comment}" if comment else ""))
    return "\n".join(lines) + "\n"


def _privacy_unit(header: list[str], profiles: dict[str, _ColumnProfile]) -> tuple[str, str]:
    """The candidate unit DP protects, and what the owner must check: a column named for a person
    first, even when it repeats (the guarantee then covers all of a person's rows: user-level DP),
    else an id whose values never repeat (a row-level unit protects one record, not a person)."""
    person = next((n for n in header if _PERSON_NAME.search(n) and profiles[n].type == "string"), None)
    if person is not None and profiles[person].repeated:
        row_ids = [n for n in header if not profiles[n].repeated and _ID_NAME.search(n)]
        return person, ("candidate: the person; values repeat, so set privacy.max_rows_per_unit in params.yaml "
                        "(user-level DP: each person's rows bounded and protected together) or training refuses"
                        + (f"; {row_ids[0]} never repeats, but as the unit it would protect one record, not a person"
                           if row_ids else ""))
    unit = next((n for n in header if not profiles[n].repeated and _ID_NAME.search(n)),
                next((n for n in header if not profiles[n].repeated and profiles[n].type == "string"), header[0]))
    return unit, f"candidate: values never repeat{'' if _ID_NAME.search(unit) else ' (check it)'}"


def _column_line(profile: _ColumnProfile, role: bool) -> tuple[str, str]:
    """One column's entry and the comment that says what the owner must still decide."""
    kind = profile.type
    if kind == "text" and not role:
        return _text_line(profile)
    kind = "string" if kind == "text" else kind  # a unit or target is never free text
    if kind == "string" and not role and profile.number_with_defects:  # the type, its defects quarantined
        kind = profile.number_with_defects
    numeric = kind in INTEGER_TYPES or kind == "float"
    parts = [f"type: {kind}"]
    if profile.missing:
        parts.append("nullable: true")
    one_word = profile.words == profile.present  # ids have no spaces; distinct notes are chance
    if not profile.repeated and profile.present > 1 and ((kind == "string" and one_word) or kind in INTEGER_TYPES):
        parts.append("unique: true")  # an id; distinct measures (a salary, a time) or notes are chance, not a rule
    few = profile.distinct is not None and profile.repeated
    if few and (kind == "string" or (role and kind != "bool")):
        values = sorted(profile.distinct, key=lambda v: (float(v) if numeric else 0.0, v))
        parts.append("allowed: [" + ", ".join(_yaml_value(v, kind) for v in values) + "]")
        return ", ".join(parts), ""
    if kind == "bool" and role:
        parts.append("allowed: [false, true]")
    elif not role and kind in _TIME_KINDS:
        return _time_line(profile, kind, parts)
    elif not role and numeric:
        return ", ".join(parts), "declare min: ..., max: ... from domain knowledge" + (
            f"; {profile.not_numbers} value(s) are not numbers: validation will quarantine those records"
            if profile.not_numbers else "")
    elif kind == "string" and not role and "unique: true" in parts:
        return ", ".join(parts), "an id (every value distinct): never a model input"
    elif kind == "string" and not role:
        return ", ".join(parts), "free text: never a model input (give `allowed:` to make it a category)"
    return ", ".join(parts), ""


def _text_line(profile: _ColumnProfile) -> tuple[str, str]:
    """Free text: what the text preset (train.model: text) reads; never a tabular feature."""
    said = [f"free text, what the text preset reads (train.model: text): set max_chars to the longest text you "
            f"accept; longer ones are quarantined"]
    if profile.over_draft_chars:
        said.append(f"{profile.over_draft_chars} record(s) are longer than {DRAFT_MAX_CHARS}")
    if profile.missing:
        said.append(f"{profile.missing} record(s) have none: validation will quarantine them")
    return f"type: text, max_chars: {DRAFT_MAX_CHARS}", "; ".join(said)


def _time_line(profile: _ColumnProfile, kind: str, parts: list[str]) -> tuple[str, str]:
    """A date or datetime feature: its format where not ISO 8601, bounds to declare in it, and its defects."""
    fmt = profile.time_format
    if fmt in _ISO_FORMATS:
        fmt = None  # ISO 8601 is what a date column reads without a format
    if fmt:
        parts.append(f"format: '{fmt}'")
    low, high = (datetime(*day).strftime(fmt or ("%Y-%m-%d" if kind == "date" else "%Y-%m-%dT%H:%M:%S"))
                 for day in ((2000, 1, 1), (2030, 12, 31)))
    said = [f"declare min: '{low}', max: '{high}' from domain knowledge" + (", written in the format" if fmt else "")]
    failing = profile.not_times.get(profile.time_format, 0)
    if failing:
        said.append(f"{failing} value(s) are not {kind}s in it: validation will quarantine those records")
    if fmt and "%d" in fmt and "%m" in fmt:
        twin = fmt.replace("%d", "%?").replace("%m", "%d").replace("%?", "%m")
        if profile.not_times.get(twin) == failing:
            said.append(f"every value also reads as '{twin}' (no day above 12): check which the export writes")
    return ", ".join(parts), "; ".join(said)
