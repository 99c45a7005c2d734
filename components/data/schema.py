"""Dataset schemas: a YAML file per dataset, checked whole at load time (privflow.data.row_checks
turns one into pandera checks).

YAML rather than a pandera DataFrameModel module: the people who know the data (a data
steward at a hospital) can edit it without writing Python, and loading it runs no code.

Everything that can be wrong with a schema is found here, before a byte of data is read:
each mistake is reported with the file, the column and what to write instead. Values that
YAML would silently turn into something else are not guessed at: the file is read with
YAML 1.2's rules (`yes`, `no`, `on`, `off` stay strings; only true/false are booleans; a
date stays the text it was written as).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

ColumnType = Literal["string", "text", "float", "int8", "int16", "int32", "int64", "bool", "date", "datetime"]
INTEGER_TYPES = ("int8", "int16", "int32", "int64")
NUMERIC_TYPES = ("float", *INTEGER_TYPES)
TIME_TYPES = ("date", "datetime")
TARGET_TYPES = ("string", "bool", *NUMERIC_TYPES)
MAX_CLASSES = 1000
DEFAULT_TRUE = ("true", "t", "yes", "y", "1")
DEFAULT_FALSE = ("false", "f", "no", "n", "0")

# pandas dtypes after coercion: nullable extension types, so a missing value never turns an
# int column into float or a bool column into object behind our back. Dates and times are
# naive datetimes (NaT where missing).
PANDAS_DTYPE: dict[str, str] = {
    "string": "string", "text": "string", "float": "float64", "bool": "boolean",
    "int8": "Int8", "int16": "Int16", "int32": "Int32", "int64": "Int64",
    "date": "datetime64[ns]", "datetime": "datetime64[ns]",
}
KEYS_BY_TYPE = {"bool": {"true_values", "false_values"}, "date": {"format"}, "datetime": {"format"},
                "text": {"max_chars"}}
Scalar = str | int | float | bool


def parse_time(value: Scalar, kind: str, fmt: str | None = None) -> datetime:
    """A bound or an `allowed` value of a date/datetime column, as a naive datetime."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"{value!r} is not a {kind} written as text")
    parsed = datetime.strptime(value, fmt) if fmt else datetime.fromisoformat(value)
    if kind == "date" and (parsed.hour, parsed.minute, parsed.second, parsed.microsecond) != (0, 0, 0, 0):
        raise ValueError(f"{value!r} has a time of day; a date column holds dates only")
    return parsed if parsed.tzinfo is None else parsed.astimezone(timezone.utc).replace(tzinfo=None)


class ColumnSpec(BaseModel):
    """One declared column. Validated against its own type when the schema loads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ColumnType
    nullable: bool = False
    unique: bool = False
    min: Scalar | None = None
    max: Scalar | None = None
    allowed: list[Scalar] | None = None
    regex: str | None = None
    fill: Scalar | None = None                  # a nullable feature's stand-in for a missing value
    true_values: list[str] | None = None        # bool: how the export writes true (default: true, yes, 1...)
    false_values: list[str] | None = None
    format: str | None = None                   # date/datetime: strptime format (default ISO 8601)
    max_chars: int | None = None                # text: the longest a text may be, in characters

    def typed(self, value: Scalar, what: str) -> Any:
        """`value` (a bound, an allowed value, the fill) as this column's type, or ValueError."""
        kind = self.type
        if kind in ("string", "text"):
            if not isinstance(value, str):
                raise ValueError(f"{what} {value!r} is not text; quote it: '{value}'")
            return value
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in self.true_spellings:
                return True
            if isinstance(value, str) and value.strip().lower() in self.false_spellings:
                return False
            raise ValueError(f"{what} {value!r} is not a boolean; write true or false")
        if kind in TIME_TYPES:
            try:
                return parse_time(value, kind, self.format)
            except ValueError as error:
                example = datetime(2024, 1, 31, 8 * (kind != "date")).strftime(
                    self.format or ("%Y-%m-%d" if kind == "date" else "%Y-%m-%dT%H:%M:%S"))
                raise ValueError(f"{what} {value!r} is not a {kind} ({error}); write it as '{example}'"
                                 + (f", in the declared format {self.format!r}" if self.format else "")) from None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{what} {value!r} is not a number; write it without quotes, e.g. 0 or 2.5")
        if kind in INTEGER_TYPES:
            if value != int(value):
                raise ValueError(f"{what} {value!r} is not a whole number, as {kind} needs")
            info = _int_range(kind)
            if not info[0] <= value <= info[1]:
                raise ValueError(f"{what} {value!r} does not fit {kind} ({info[0]}..{info[1]}); "
                                 "declare a wider integer type")
            return int(value)
        return float(value)

    @property
    def true_spellings(self) -> tuple[str, ...]:
        return tuple(v.strip().lower() for v in self.true_values) if self.true_values else DEFAULT_TRUE

    @property
    def false_spellings(self) -> tuple[str, ...]:
        return tuple(v.strip().lower() for v in self.false_values) if self.false_values else DEFAULT_FALSE

    @property
    def allowed_values(self) -> list | None:
        """`allowed` in the column's own type (the class order when it is the target)."""
        return None if self.allowed is None else [self.typed(v, "allowed value") for v in self.allowed]

    @property
    def bounds(self) -> tuple[Any, Any]:
        """(min, max) in the column's type; for a numeric column with `allowed` and no bounds,
        the smallest and largest allowed value (declared, so data-independent)."""
        low = None if self.min is None else self.typed(self.min, "min")
        high = None if self.max is None else self.typed(self.max, "max")
        if self.allowed and self.type in NUMERIC_TYPES:
            values = self.allowed_values
            low, high = (min(values) if low is None else low), (max(values) if high is None else high)
        return low, high

    @property
    def is_numeric_like(self) -> bool:
        return self.type in NUMERIC_TYPES or self.type in TIME_TYPES


def _int_range(kind: str) -> tuple[int, int]:
    bits = int(kind.removeprefix("int"))
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


class DatasetSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str
    privacy_unit: str
    target: str
    strict: bool = True
    columns: dict[str, ColumnSpec]

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSchema:
        problems = role_problems(self)
        if not problems:
            problems = [p for name, spec in self.columns.items() for p in column_problems(name, spec)]
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def target_spec(self) -> ColumnSpec:
        return self.columns[self.target]

    @property
    def classes(self) -> list[str]:
        """The class names, in the order of the target's `allowed` list."""
        return [class_name(v) for v in self.target_spec.allowed_values or []]

    @property
    def feature_columns(self) -> list[str]:
        """Tabular model inputs: every declared column but the person id, the target and free
        text (a string without `allowed`, or a text: a text encoder reads those)."""
        return [c for c, spec in self.columns.items() if c not in (self.privacy_unit, self.target)
                and not (spec.type == "string" and not spec.allowed) and spec.type != "text"]

    @property
    def text_columns(self) -> list[str]:
        """The `text` columns: what a pretrained text encoder reads."""
        return [c for c, spec in self.columns.items() if spec.type == "text"]


def class_name(value: Any) -> str:
    """How a class is named in cards, reports and predictions: as a data owner writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


def role_problems(schema: DatasetSchema) -> list[str]:
    problems = []
    for role in ("privacy_unit", "target"):
        name = getattr(schema, role)
        if name not in schema.columns:
            problems.append(f"{role}: '{name}' is not a declared column; name one of "
                            f"{list(schema.columns)[:10]} or declare it under `columns:`")
    if problems:
        return problems
    if schema.privacy_unit == schema.target:
        return [f"privacy_unit and target are both '{schema.target}': the person id cannot be the label"]
    spec = schema.target_spec
    where = f"column '{schema.target}' (the target)"
    if spec.type not in TARGET_TYPES:
        problems.append(f"{where}: a {spec.type} cannot be a class label; use a string, bool or integer "
                        "column, or derive the class in the export")
    elif not spec.allowed:
        example = "[false, true]" if spec.type == "bool" else "[0, 1]" if spec.type != "string" else '["no", "yes"]'
        problems.append(f"{where}: needs `allowed:`, the class labels in order, e.g. `allowed: {example}`")
    elif not 2 <= len(spec.allowed) <= MAX_CLASSES:
        problems.append(f"{where}: `allowed:` lists {len(spec.allowed)} class(es); a classifier needs "
                        f"2 to {MAX_CLASSES}")
    if spec.nullable:
        problems.append(f"{where}: `nullable: true` would let rows without a label in; remove it (such rows "
                        "are then quarantined)")
    return problems


def column_problems(name: str, spec: ColumnSpec) -> list[str]:
    """What is wrong with one column's declaration, each as a sentence that says what to write."""
    where = f"column '{name}' ({spec.type})"
    problems = []
    for key in ("true_values", "false_values", "format", "max_chars"):
        if getattr(spec, key) is not None and key not in KEYS_BY_TYPE.get(spec.type, ()):
            problems.append(f"{where}: `{key}:` applies to "
                            f"{' and '.join(t for t, keys in KEYS_BY_TYPE.items() if key in keys)} columns only")
    if spec.regex is not None:
        if spec.type != "string":
            problems.append(f"{where}: `regex:` applies to string columns only")
        else:
            try:
                re.compile(spec.regex)
            except re.error as error:
                problems.append(f"{where}: regex {spec.regex!r} does not compile ({error}); fix or remove it")
    if spec.type == "text":
        problems += _text_problems(where, spec)
    if spec.type == "bool" and set(spec.true_spellings) & set(spec.false_spellings):
        problems.append(f"{where}: true_values and false_values share "
                        f"{sorted(set(spec.true_spellings) & set(spec.false_spellings))}")
    for key in ("min", "max", "fill"):
        value = getattr(spec, key)
        if value is not None:
            if not spec.is_numeric_like and not (key == "fill" and spec.type == "bool"):
                problems.append(f"{where}: `{key}:` applies to numeric, date and datetime columns only"
                                + (" (and `fill:` to bool)" if key == "fill" else ""))
                continue
            try:
                spec.typed(value, key)
            except ValueError as error:
                problems.append(f"{where}: {error}")
    if spec.allowed is not None:
        try:
            values = spec.allowed_values
            if len(set(values)) != len(values):
                problems.append(f"{where}: `allowed:` lists a value twice")
            elif not values:
                problems.append(f"{where}: `allowed:` is empty; list the values or remove it")
        except ValueError as error:
            problems.append(f"{where}: {error}")
    if not problems and spec.fill is not None and not spec.nullable:
        problems.append(f"{where}: `fill:` is for nullable columns; add `nullable: true` or remove it")
    return problems


MAX_TEXT_CHARS = 1_000_000


def _text_problems(where: str, spec: ColumnSpec) -> list[str]:
    """A text column declares how long a text may be; it is free text, so no value list."""
    problems = []
    if spec.max_chars is None or isinstance(spec.max_chars, bool) or not 1 <= spec.max_chars <= MAX_TEXT_CHARS:
        problems.append(f"{where}: needs `max_chars:`, the longest a text may be in characters (1 to "
                        f"{MAX_TEXT_CHARS:,}), e.g. `max_chars: 2000`; longer texts are quarantined")
    for key in ("allowed", "unique"):
        if getattr(spec, key):
            problems.append(f"{where}: `{key}:` does not apply to free text; declare a string column instead")
    return problems
