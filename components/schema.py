"""Dataset schemas: a YAML file per dataset, turned into a pandera DataFrameSchema.

YAML rather than a pandera DataFrameModel module: the people who know the data (a data
steward at a hospital) can edit it without writing Python, and loading it runs no code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandera.pandas as pa
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from components.errors import SchemaError

ColumnType = Literal["string", "float", "int8", "int16", "int32", "int64", "bool"]

# pandas dtypes after coercion: nullable extension types, so a missing value never turns an
# int column into float or a bool column into object behind our back.
PANDAS_DTYPE: dict[str, str] = {
    "string": "string", "float": "float64", "bool": "boolean",
    "int8": "Int8", "int16": "Int16", "int32": "Int32", "int64": "Int64",
}


class ColumnSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ColumnType
    nullable: bool = False
    unique: bool = False
    min: float | None = None
    max: float | None = None
    allowed: list[str | int | float | bool] | None = None
    regex: str | None = None


class DatasetSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str
    privacy_unit: str
    target: str
    strict: bool = True
    columns: dict[str, ColumnSpec]

    @model_validator(mode="after")
    def _roles_are_declared(self) -> DatasetSchema:
        for role in ("privacy_unit", "target"):
            if getattr(self, role) not in self.columns:
                raise ValueError(f"{role} '{getattr(self, role)}' is not a declared column")
        if not self.columns[self.target].allowed:
            raise ValueError(f"target '{self.target}' needs `allowed:` (the class labels)")
        return self

    @property
    def classes(self) -> list[str]:
        return [str(v) for v in self.columns[self.target].allowed or []]

    @property
    def feature_columns(self) -> list[str]:
        """Model inputs: every declared column but the person id and the target."""
        return [c for c in self.columns if c not in (self.privacy_unit, self.target)]


def load_schema(path: Path) -> DatasetSchema:
    if not path.is_file():
        raise SchemaError(f"{path}: schema file not found; set the dataset's `schema:` under `datasets:` in params.yaml")
    try:
        return DatasetSchema.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except yaml.YAMLError as error:
        raise SchemaError(f"{path}: not valid YAML: {error}") from None
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'top level'}: {e['msg']}" for e in error.errors()
        )
        raise SchemaError(f"{path}: {problems}") from None


def _checks(spec: ColumnSpec) -> list[pa.Check]:
    checks = []
    if spec.min is not None:
        checks.append(pa.Check.ge(spec.min))
    if spec.max is not None:
        checks.append(pa.Check.le(spec.max))
    if spec.allowed is not None:
        checks.append(pa.Check.isin(spec.allowed))
    if spec.regex is not None:
        checks.append(pa.Check.str_matches(spec.regex))
    return checks


def to_pandera(schema: DatasetSchema, *, unique: bool = True) -> pa.DataFrameSchema:
    """The pandera schema for a frame already coerced by `records.coerce_batch`.

    `unique=False` leaves uniqueness out, for callers that check it across batches.
    """
    return pa.DataFrameSchema(
        {
            name: pa.Column(PANDAS_DTYPE[spec.type], _checks(spec),
                            nullable=spec.nullable, unique=spec.unique and unique)
            for name, spec in schema.columns.items()
        },
        strict=schema.strict,
        coerce=False,
    )
