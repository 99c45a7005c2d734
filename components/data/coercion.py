"""String columns -> the schema's declared types, vectorised, refusing what does not fit.

Nothing is guessed or rounded: 300 never wraps into an int8, 2.5 never becomes 2, "1.234"
in a file with decimal commas is not read as one point two (it is refused: it may mean
1234), and a bool is true or false only as the schema spells it. Each value that does not
fit is a failure on its (row, column), so validation quarantines the record with the
reason; values never appear in messages.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from privflow.data.records import RowFailure, StringBatch
from privflow.data.schema import INTEGER_TYPES, PANDAS_DTYPE, TIME_TYPES, ColumnSpec, DatasetSchema, parse_time

_NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
# what datetime64[ns] can hold (pandas' own range), in microseconds since the epoch
_NS_RANGE = (np.datetime64("1678-01-01", "us"), np.datetime64("2261-12-31", "us"))
_NULL = pa.scalar(None, pa.string())


def coerce_batch(batch: StringBatch, schema: DatasetSchema) -> tuple[pd.DataFrame, list[RowFailure]]:
    """Convert string columns to declared types; each value that does not fit is a failure."""
    index = pd.Index(batch.rows, name="row")
    typed: dict[str, pd.Series] = {}
    failures: list[RowFailure] = []
    for name, spec in schema.columns.items():
        typed[name], bad = _coerce_one(batch.columns.column(name).combine_chunks(), spec, index, batch.decimal,
                                       batch.thousands)
        failures += [RowFailure(int(r), name, f"coerce_{spec.type}") for r in batch.rows[bad]]
    return pd.DataFrame(typed, index=index), failures


def _coerce_one(strings: pa.Array, spec: ColumnSpec, index: pd.Index,
                decimal: str, thousands: str | None = None) -> tuple[pd.Series, np.ndarray]:
    """Typed column and a mask of values that could not be represented in that type."""
    numeric = spec.type == "float" or spec.type in INTEGER_TYPES
    if numeric and decimal == "." and (numbers := _clean_numbers(strings)) is not None:
        return _numeric(numbers, np.zeros(len(index), bool), spec, index)
    trimmed = pc.utf8_trim_whitespace(strings)
    missing = _mask(pc.equal(trimmed, ""), True)
    present = pc.if_else(missing, _NULL, trimmed)
    if spec.type in ("string", "text"):  # kept as written; only a blank one is missing
        kept = pc.if_else(missing, _NULL, strings)
        return pd.Series(pd.array(kept, dtype=PANDAS_DTYPE["string"]), index=index), np.zeros(len(index), bool)
    if spec.type == "bool":
        lowered = pc.utf8_lower(trimmed)
        true = _mask(pc.is_in(lowered, pa.array(spec.true_spellings)), False)
        false = _mask(pc.is_in(lowered, pa.array(spec.false_spellings)), False)
        typed = pd.arrays.BooleanArray(true, ~(true | false))
        return pd.Series(typed, index=index), ~missing & ~(true | false)
    if spec.type in TIME_TYPES:
        return _times(present, missing, spec, index)
    numbers, wrong_mark = marked_numbers(present, decimal, thousands)
    series, bad = _numeric(numbers, missing, spec, index)
    return series, bad | wrong_mark


def marked_numbers(present: pa.Array, decimal: str, thousands: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Text written with the export's decimal and digit-group marks -> float64 (NaN where not a
    number), and a mask of values whose marks are refused: a group mark out of place, a point in
    a decimal-comma file ("1.234" may mean 1234: refused, never guessed). The schema draft reads
    numbers through this too, so it calls a number what validation accepts."""
    wrong_mark = np.zeros(len(present), bool)
    if thousands is not None:
        present, wrong_mark = _ungrouped(present, decimal, thousands)
    if decimal != ".":
        wrong_mark |= _mask(pc.match_substring(present, "."), False)
        present = pc.replace_substring(present, decimal, ".")
    return _to_float(present).to_numpy(zero_copy_only=False).astype("float64"), wrong_mark


def _ungrouped(present: pa.Array, decimal: str, thousands: str) -> tuple[pa.Array, np.ndarray]:
    """Numbers with their digit-group marks taken out, and a mask of those grouped wrongly: 4.157,45
    and 12.345.678 read (thousands "."), 41.57,45 or 4157.45 do not, as a mark in the wrong place
    may be a typing slip or another convention's decimal mark. Values without a mark are left as they are."""
    if thousands == " ":  # French exports group by a no-break space (U+00A0) or a narrow one (U+202F)
        present = pc.replace_substring_regex(present, "[\u00a0\u202f]", " ")
    mark, point = re.escape(thousands), re.escape(decimal)
    marked = _mask(pc.match_substring(present, thousands), False)
    grouped = _mask(pc.match_substring_regex(present, rf"^[+-]?\d{{1,3}}({mark}\d{{3}})+({point}\d*)?$"), False)
    return pc.replace_substring(present, thousands, ""), marked & ~grouped


def _mask(values: pa.Array, null_as: bool) -> np.ndarray:
    return pc.fill_null(values, null_as).to_numpy(zero_copy_only=False)


def _clean_numbers(strings: pa.Array) -> np.ndarray | None:
    """The fast path for the common case, every value plain decimal text: one cast, no copies."""
    if strings.null_count:
        return None
    try:
        return pc.cast(strings, pa.float64()).to_numpy()
    except pa.ArrowInvalid:
        return None


def _to_float(values: pa.Array) -> pa.Array:
    """Decimal text -> float64; anything else -> null (the caller marks it a failure)."""
    try:
        return pc.cast(values, pa.float64())
    except pa.ArrowInvalid:
        numeric = pc.match_substring_regex(values, _NUMBER)
        return pc.cast(pc.if_else(numeric, values, _NULL), pa.float64())


def _numeric(numbers: np.ndarray, missing: np.ndarray, spec: ColumnSpec,
             index: pd.Index) -> tuple[pd.Series, np.ndarray]:
    """Floats (NaN where missing or unreadable) as the declared numeric type, and the failures."""
    finite = np.isfinite(numbers)
    if spec.type == "float":
        return pd.Series(np.where(finite, numbers, np.nan), index=index), ~missing & ~finite
    info = np.iinfo(spec.type)
    with np.errstate(invalid="ignore"):
        fits = finite & (numbers == np.floor(numbers)) & (numbers >= info.min) & (numbers <= info.max)
    # 300 into int8 or 2.5 into int is refused, never wrapped or rounded
    typed = pd.arrays.IntegerArray(np.where(fits, numbers, 0).astype(spec.type), ~fits)
    return pd.Series(typed, index=index), ~missing & ~fits


def _times(present: pa.Array, missing: np.ndarray, spec: ColumnSpec,
           index: pd.Index) -> tuple[pd.Series, np.ndarray]:
    """ISO 8601 text (or the declared `format`) -> naive datetimes; time zones -> UTC."""
    if spec.format:
        parsed = formatted_times(present, spec.format)
    else:
        parsed = iso_times(present, spec.type)
    micros = parsed.to_numpy(zero_copy_only=False).astype("datetime64[us]")
    representable = ~np.isnat(micros) & (micros >= _NS_RANGE[0]) & (micros <= _NS_RANGE[1])
    values = np.where(representable, micros, np.datetime64("NaT", "us")).astype("datetime64[ns]")
    return pd.Series(values, index=index), ~missing & ~representable


def formatted_times(present: pa.Array, fmt: str) -> pa.Array:
    """Text in the declared strptime format -> timestamps, refusing impossible dates: Arrow's
    strptime rolls 31.02.2026 over into 3 March, so a value that does not read back as written
    is checked by Python's strptime, which refuses it (and accepts what Arrow's writes padded,
    such as 1.2.2026)."""
    parsed = pc.strptime(present, format=fmt, unit="us", error_is_null=True)
    try:
        doubtful = pc.fill_null(pc.not_equal(pc.strftime(parsed, format=fmt), present), False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # a format Arrow cannot write: check all
        doubtful = pc.is_valid(parsed)
    if not pc.any(doubtful).as_py():
        return parsed
    valid = [flag is False or _parse_or_none(value, "datetime", fmt) is not None
             for flag, value in zip(doubtful.to_pylist(), present.to_pylist())]
    return pc.if_else(pa.array(valid), parsed, pa.scalar(None, parsed.type))


def iso_times(present: pa.Array, kind: str) -> pa.Array:
    """One C++ cast for a clean column; value by value (Python's ISO parser) only when some
    value is malformed or carries a zone offset, so one bad cell never fails the batch."""
    try:
        cast = pc.cast(present, pa.date32() if kind == "date" else pa.timestamp("us"))
        return pc.cast(cast, pa.timestamp("us"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([_parse_or_none(v, kind) for v in present.to_pylist()], pa.timestamp("us"))


def _parse_or_none(value: str | None, kind: str, fmt: str | None = None):
    if value is None:
        return None
    try:
        return parse_time(value, kind, fmt)
    except ValueError:
        return None
