"""Parse a CSV snapshot into typed rows, accounting for every record.

Every data record ends up in exactly one place: typed and checked in the frame, or listed
as unparseable (bad quoting, wrong field count). Values are never put in messages.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.errors import DatasetError
from components.schema import PANDAS_DTYPE, ColumnSpec, DatasetSchema
from components.sources import SourceFile

UNPARSEABLE = "*"  # the column of a failure that concerns the whole record
_FIELD_LIMIT = 16 << 20
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


@dataclass(frozen=True, order=True)
class RowFailure:
    """Record `row` (1-based, header excluded) failed `check` on `column`."""

    row: int
    column: str
    check: str

    def describe(self, source: str) -> str:
        where = "the whole record" if self.column == UNPARSEABLE else f"column {self.column}"
        return f"{source}: row {self.row}, {where}: failed {self.check}"


@dataclass
class ParsedTable:
    frame: pd.DataFrame  # one string column per declared column, index = record number
    rows_in: int
    unparseable: list[RowFailure] = field(default_factory=list)


def _decode(raw: bytes, source: str, encoding: str) -> str:
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DatasetError(
            f"{source}: line {line}, byte {error.start} is not valid {encoding}; "
            "set ingest.encoding in params.yaml to the file's encoding (e.g. latin-1, cp1252)"
        ) from None
    except LookupError:
        raise DatasetError(f"{source}: unknown encoding '{encoding}' in ingest.encoding") from None
    return text.removeprefix("\ufeff")


def _check_header(header: list[str], schema: DatasetSchema, source: str, delimiter: str) -> None:
    declared = set(schema.columns)
    missing = [c for c in schema.columns if c not in header]
    unknown = [c for c in header if c not in declared]
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise DatasetError(f"{source}: header repeats column(s) {duplicated}; rename them")
    if len(header) == 1 and len(declared) > 1:
        raise DatasetError(
            f"{source}: header has a single column, the schema declares {len(declared)}; "
            f"is the delimiter really {delimiter!r}? set ingest.delimiter in params.yaml"
        )
    if missing or (unknown and schema.strict):
        raise DatasetError(
            f"{source}: columns do not match the schema: missing {missing}, unknown {unknown}; "
            "fix the file or declare the columns in the schema file (validate.schema)"
        )


def read_records(
    raw: bytes, source: str, *, delimiter: str = ",", encoding: str = "utf-8"
) -> tuple[list[str], Iterator[tuple[int, list[str] | None]]]:
    """The header, and (record number, fields or None if unparseable) for every record."""
    if not raw.strip():
        raise DatasetError(f"{source}: file is empty; expected a header line and data rows")
    csv.field_size_limit(_FIELD_LIMIT)
    reader = csv.reader(io.StringIO(_decode(raw, source, encoding), newline=""),
                        delimiter=delimiter, strict=True)
    try:
        header = [name.strip() for name in next(reader)]
    except csv.Error:
        raise DatasetError(f"{source}: header line cannot be parsed as CSV") from None

    def records() -> Iterator[tuple[int, list[str] | None]]:
        row = 0
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error:
                record = None
            if record == []:  # a blank line is no record
                continue
            row += 1
            yield row, record if record is None or len(record) == len(header) else None

    return header, records()


def parse_csv(
    raw: bytes, source: str, schema: DatasetSchema, *, delimiter: str = ",", encoding: str = "utf-8"
) -> ParsedTable:
    """Split records; a malformed record is counted and kept out, never guessed at."""
    header, records = read_records(raw, source, delimiter=delimiter, encoding=encoding)
    _check_header(header, schema, source, delimiter)
    kept: list[list[str]] = []
    numbers: list[int] = []
    unparseable: list[RowFailure] = []
    rows_in = 0
    for rows_in, record in records:
        if record is None:
            unparseable.append(RowFailure(rows_in, UNPARSEABLE, "unparseable_record"))
        else:
            kept.append(record)
            numbers.append(rows_in)
    frame = pd.DataFrame(kept, columns=header, index=pd.Index(numbers, name="row"), dtype=object)
    return ParsedTable(frame[list(schema.columns)], rows_in, unparseable)


def _coerce_one(values: pd.Series, spec: ColumnSpec) -> tuple[pd.Series, pd.Series]:
    """Typed column and a mask of values that could not be represented in that type."""
    missing = values.isna() | (values.astype("string").str.strip() == "")
    if spec.type == "string":
        return values.where(~missing, None).astype("string"), pd.Series(False, index=values.index)
    if spec.type == "bool":
        lowered = values.astype("string").str.strip().str.lower()
        typed = pd.Series(pd.NA, index=values.index, dtype="boolean")
        typed[lowered.isin(_TRUE)] = True
        typed[lowered.isin(_FALSE)] = False
        return typed, ~missing & typed.isna()
    numbers = pd.to_numeric(values.where(~missing), errors="coerce").astype("float64")
    bad = ~missing & ~np.isfinite(numbers)
    if spec.type == "float":
        return numbers.where(~bad), bad
    info = np.iinfo(spec.type)
    integral = np.isfinite(numbers) & (numbers == np.floor(numbers))
    fits = integral & (numbers >= info.min) & (numbers <= info.max)
    bad = ~missing & ~fits  # 300 into int8 or 2.5 into int is refused, never wrapped or rounded
    return numbers.where(fits).astype(PANDAS_DTYPE[spec.type]), bad


def coerce_columns(frame: pd.DataFrame, schema: DatasetSchema) -> tuple[pd.DataFrame, list[RowFailure]]:
    """Convert string columns to declared types; each value that does not fit is a failure."""
    typed: dict[str, pd.Series] = {}
    failures: list[RowFailure] = []
    for name, spec in schema.columns.items():
        typed[name], bad = _coerce_one(frame[name], spec)
        failures += [RowFailure(int(r), name, f"coerce_{spec.type}") for r in frame.index[bad.to_numpy()]]
    return pd.DataFrame(typed, index=frame.index), failures


def _csv_bytes(file: SourceFile, label: str) -> bytes:
    if file.kind != ".csv.gz":
        return file.data
    try:
        return gzip.decompress(file.data)
    except (OSError, EOFError, zlib.error):
        raise DatasetError(f"{label}: not a complete gzip file; re-export or re-compress it") from None


def _parquet_table(file: SourceFile, label: str) -> pa.Table:
    try:
        return pq.read_table(io.BytesIO(file.data))
    except (pa.ArrowException, OSError):
        raise DatasetError(f"{label}: not a readable Parquet file; re-export it") from None


def _as_strings(column: pa.ChunkedArray) -> list[str | None]:
    """Parquet values as the strings coercion expects; nulls and float NaN are missing."""
    return [None if v is None or (isinstance(v, float) and v != v) else str(v) for v in column.to_pylist()]


def parse_parquet(file: SourceFile, label: str, schema: DatasetSchema) -> ParsedTable:
    table = _parquet_table(file, label)
    _check_header(table.column_names, schema, label, ",")
    index = pd.Index(range(1, table.num_rows + 1), name="row")
    frame = pd.DataFrame({c: _as_strings(table.column(c)) for c in schema.columns}, index=index, dtype=object)
    return ParsedTable(frame, table.num_rows)


def _label(source: str, file: SourceFile) -> str:
    """How messages name a file: the source itself, or the file inside a source folder."""
    return source if source.endswith(file.name) else f"{source}/{file.name}"


def parse_source(files: list[SourceFile], source: str, schema: DatasetSchema, *,
                 delimiter: str = ",", encoding: str = "utf-8") -> ParsedTable:
    """All files of a source as one table; rows are numbered across files, in name order."""
    frames, unparseable, total = [], [], 0
    for file in files:
        label = _label(source, file)
        table = (parse_parquet(file, label, schema) if file.kind == ".parquet" else
                 parse_csv(_csv_bytes(file, label), label, schema, delimiter=delimiter, encoding=encoding))
        frames.append(table.frame.set_axis(table.frame.index + total))
        unparseable += [RowFailure(f.row + total, f.column, f.check) for f in table.unparseable]
        total += table.rows_in
    frame = pd.concat(frames) if len(frames) > 1 else frames[0]
    return ParsedTable(frame.rename_axis("row"), total, unparseable)


def describe_source(files: list[SourceFile], source: str, *, delimiter: str = ",",
                    encoding: str = "utf-8") -> tuple[list[str], int]:
    """Column names (of the first file) and the number of records, without a schema."""
    columns, rows = [], 0
    for file in files:
        label = _label(source, file)
        if file.kind == ".parquet":
            metadata = pq.read_metadata(io.BytesIO(file.data)) if file.data else None
            if metadata is None:
                raise DatasetError(f"{label}: empty file; expected a Parquet file")
            header, count = metadata.schema.names, metadata.num_rows
        else:
            header, records = read_records(_csv_bytes(file, label), label, delimiter=delimiter, encoding=encoding)
            count = sum(1 for _ in records)
        columns, rows = columns or header, rows + count
    return columns, rows
