"""Read a source's records in bounded memory, accounting for every one of them.

Every data record ends up in exactly one place: in a batch of string columns, or listed as
unparseable (bad quoting, wrong field count) with its number. Records are numbered from 1
across the source's files, in name order. Values never appear in messages.

pyarrow's streaming CSV reader does the parsing (C++, a block at a time, about 10x faster than
the csv module here, which matters on multi-GB exports); its invalid-row handler reports each
malformed record with its number, so nothing is skipped unseen. Decoding is checked here,
before pyarrow, to name the exact line and byte of a wrong encoding.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from privflow.data.decoding import PEEK, CheckedText, check_header, file_label, read_header
from privflow.data.prefetch import read_ahead
from privflow.data.schema import DatasetSchema
from privflow.data.sources import Member, disk_members, kind_of, list_source
from privflow.errors import DatasetError

UNPARSEABLE = "*"  # the column of a failure that concerns the whole record
BLOCK_SIZE = 16 << 20  # bytes pyarrow parses at a time: bounds memory, and the longest record
PARQUET_BATCH = 65_536


@dataclass(frozen=True)
class FileSpan:
    """The records `first_row` .. `first_row + rows - 1` of a source came from file `label`."""

    label: str
    first_row: int
    rows: int


@dataclass(frozen=True, order=True)
class RowFailure:
    """Record `row` (1-based across the source, header excluded) failed `check` on `column`."""

    row: int
    column: str
    check: str

    def describe(self, spans: list[FileSpan], source: str) -> str:
        label, row = locate(self.row, spans, source)
        where = "the whole record" if self.column == UNPARSEABLE else f"column {self.column}"
        return f"{label}: row {row}, {where}: failed {self.check}"


def locate(row: int, spans: list[FileSpan], source: str) -> tuple[str, int]:
    """The file a record came from and its row number inside that file."""
    for span in spans:
        if span.first_row <= row < span.first_row + span.rows:
            return span.label, row - span.first_row + 1
    return source, row


@dataclass
class StringBatch:
    rows: np.ndarray  # int64 record numbers
    columns: pa.Table  # the wanted columns as strings; null only where a Parquet value is null
    decimal: str = "."  # the decimal mark of the source's numbers (ingest.decimal)
    thousands: str | None = None  # their digit-group mark, if the export writes one (ingest.thousands)


class _Numbering:
    """Numbers the valid records of one file around the invalid ones pyarrow reported."""

    def __init__(self, label: str):
        self.label = label
        self.invalid: list[tuple[int, str]] = []  # (number in file, raw text), in file order
        self._next, self._barrier = 1, 0

    def on_invalid(self, row: pcsv.InvalidRow) -> str:
        if row.number is None:  # only when parsing in parallel, which _csv never asks for
            return "error"
        self.invalid.append((row.number - 1, row.text))  # pyarrow counts the header as row 1
        return "skip"

    def take(self, count: int) -> np.ndarray:
        parts = []
        while count:
            barrier = self.invalid[self._barrier][0] if self._barrier < len(self.invalid) else None
            if barrier is not None and barrier < self._next:
                raise DatasetError(f"{self.label}: records were reported out of order; please report this")
            size = count if barrier is None else min(count, barrier - self._next)
            parts.append(np.arange(self._next, self._next + size, dtype=np.int64))
            self._next += size
            count -= size
            if count:
                self._next += 1
                self._barrier += 1
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    @property
    def rows(self) -> int:
        return self._next - 1 + len(self.invalid) - self._barrier


@dataclass
class RecordReader:
    """Streams a source's files as string batches; counts rows, files and unparseable records.

    `schema=None` reads only the first column (enough to count records and list the header).
    Columns named in `optional` may be absent from a file; they then read as missing values
    (scoring data has no target column).
    """

    source: str
    schema: DatasetSchema | None = None
    delimiter: str = ","
    encoding: str = "utf-8"
    decimal: str = "."
    thousands: str | None = None
    block_size: int = BLOCK_SIZE
    optional: frozenset[str] = frozenset()
    rows_in: int = 0
    header: list[str] = field(default_factory=list)
    spans: list[FileSpan] = field(default_factory=list)
    unparseable: dict[int, str] = field(default_factory=dict)  # row -> raw text (sensitive)

    @classmethod
    def of(cls, source: str, schema: DatasetSchema | None, ingest, **options) -> RecordReader:
        """A reader with the dataset's CSV settings (`ingest:` of params.yaml)."""
        return cls(source, schema, delimiter=ingest.delimiter, encoding=ingest.encoding, decimal=ingest.decimal,
                   thousands=ingest.thousands, **options)

    @property
    def failures(self) -> list[RowFailure]:
        return [RowFailure(row, UNPARSEABLE, "unparseable_record") for row in self.unparseable]

    def batches(self, members: Iterable[Member], *, prefetch: int = 2) -> Iterator[StringBatch]:
        """The source's batches in order. Parsing runs `prefetch` batches ahead in a thread of
        its own (pyarrow releases the GIL), so it overlaps the caller's checks on 2 cores."""
        return read_ahead(self._batches(members), prefetch) if prefetch else self._batches(members)

    def _batches(self, members: Iterable[Member]) -> Iterator[StringBatch]:
        for name, stream in members:
            label, before = file_label(self.source, name), self.rows_in
            if kind_of(name) == ".parquet":
                yield from self._parquet(stream, label)
            else:
                yield from self._csv(stream, label, gzipped=kind_of(name) == ".csv.gz")
            self.spans.append(FileSpan(label, before + 1, self.rows_in - before))

    def _wanted(self, header: list[str], label: str) -> list[str]:
        self.header = self.header or [h.strip() for h in header]
        if self.schema is None:
            return header[:1]
        present = [h.strip() for h in header]
        extras = tuple(c for c in self.optional if c not in present)
        check_header(present + list(extras), self.schema, label, self.delimiter, extras)
        return [h for h in header if h.strip() in self.schema.columns]

    def _completed(self, table: pa.Table) -> pa.Table:
        """Absent optional columns as all-missing strings."""
        for name in self.optional:
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
        return table

    def _csv(self, stream, label: str, gzipped: bool) -> Iterator[StringBatch]:
        text = io.BufferedReader(CheckedText(stream, label, self.encoding, gzipped), buffer_size=PEEK)
        header = read_header(text, label, self.delimiter)
        wanted = self._wanted(header, label)
        numbering = _Numbering(label)
        try:
            reader = pcsv.open_csv(
                text,
                read_options=pcsv.ReadOptions(block_size=self.block_size, use_threads=False),  # numbered rows
                parse_options=pcsv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True,
                                                invalid_row_handler=numbering.on_invalid),
                convert_options=pcsv.ConvertOptions(
                    column_types=dict.fromkeys(header, pa.string()), include_columns=wanted,
                    strings_can_be_null=False, quoted_strings_can_be_null=False, check_utf8=False),
            )
            for batch in reader:
                table = pa.Table.from_batches([batch]).rename_columns([w.strip() for w in wanted])
                yield StringBatch(numbering.take(batch.num_rows) + self.rows_in, self._completed(table), self.decimal,
                                  self.thousands)
        except pa.ArrowInvalid as error:  # pyarrow's message may quote the record: never shown
            after = self.rows_in + numbering.rows
            problem = ("a record longer than the parse block (an unclosed quote?)"
                       if "straddl" in str(error) else "cannot be parsed as CSV")
            raise DatasetError(f"{label}: after row {after - self.rows_in}: {problem}; fix the file") from None
        for number, raw in numbering.invalid:
            self.unparseable[self.rows_in + number] = raw
        self.rows_in += numbering.rows

    def _parquet(self, stream, label: str) -> Iterator[StringBatch]:
        # Parquet needs random access (its index is at the end): the file is read into memory,
        # compressed and columnar, then decoded a batch at a time.
        try:
            parquet = pq.ParquetFile(pa.BufferReader(stream.read()))
        except (pa.ArrowException, OSError):
            raise DatasetError(f"{label}: not a readable Parquet file; re-export it") from None
        wanted = self._wanted(parquet.schema_arrow.names, label)
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH, columns=wanted):
            columns = {name: _parquet_strings(batch.column(name), label, name) for name in wanted}
            rows = np.arange(self.rows_in + 1, self.rows_in + batch.num_rows + 1, dtype=np.int64)
            self.rows_in += batch.num_rows
            yield StringBatch(rows, self._completed(pa.table(columns)), self.decimal, self.thousands)
        if parquet.metadata.num_rows == 0 and not self.header:
            raise DatasetError(f"{label}: holds no rows")


def _parquet_strings(column: pa.Array, label: str, name: str) -> pa.Array:
    """Parquet values as the strings coercion expects; nulls and float NaN are missing."""
    if pa.types.is_floating(column.type):
        column = pc.if_else(pc.is_nan(column), pa.scalar(None, column.type), column)
    try:
        return pc.cast(column, pa.string())
    except pa.ArrowException:
        raise DatasetError(f"{label}: column {name} holds {column.type} values, which cannot be "
                           "read as text; export it as a plain column") from None


def first_header(source: Path, ingest) -> list[str]:
    """The column names of the source's first file, from its first batch: no pass over the
    records and no read-ahead (prefetch would parse blocks nobody reads)."""
    reader = RecordReader(str(source), None, delimiter=ingest.delimiter, encoding=ingest.encoding)
    for _ in reader.batches(disk_members(list_source(source)[:1]), prefetch=0):
        break
    return reader.header


def describe_source(members: Iterable[Member], source: str, *, delimiter: str = ",",
                    encoding: str = "utf-8") -> tuple[list[str], int]:
    """Column names (of the first file) and the number of records, without a schema."""
    reader = RecordReader(source, None, delimiter=delimiter, encoding=encoding)
    for _ in reader.batches(members):
        pass
    return reader.header, reader.rows_in
