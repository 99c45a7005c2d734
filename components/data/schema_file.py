"""A schema file read and checked whole: YAML 1.2 (`yes`/`no` stay text, dates stay as written),
every mistake found at once, each a sentence naming the file, the column and the fix.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from privflow.data.schema import TIME_TYPES, ColumnSpec, ColumnType, DatasetSchema
from privflow.errors import SchemaError


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and no implicit timestamps."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))


def read_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_Yaml12Loader)  # noqa: S506 (safe loader)


def feature_problems(schema: DatasetSchema) -> list[str]:
    """What stops the schema's columns from becoming model inputs without reading the data."""
    if not schema.feature_columns and not schema.text_columns:
        return ["no model features: every column is the privacy unit or the target, or a free string (one "
                "without `allowed:`); declare `allowed:` for a string column, add numeric columns, or declare a "
                "`type: text` column for the text preset (train.model: text)"]
    problems = []
    for name in schema.feature_columns:
        spec = schema.columns[name]
        where = f"column '{name}' ({spec.type})"
        if not spec.is_numeric_like:
            continue
        low, high = spec.bounds
        if low is None or high is None:
            example = _time_bounds(spec) if spec.type in TIME_TYPES else "min: 0, max: 120"
            problems.append(f"{where}: a model feature needs `min:` and `max:` from domain knowledge (e.g. "
                            f"`{example}`): they scale it without spending privacy budget, where bounds read "
                            "from the rows would leak")
        elif not low < high:
            problems.append(f"{where}: min must be below max")
        elif spec.fill is not None and not low <= spec.typed(spec.fill, "fill") <= high:
            problems.append(f"{where}: fill {spec.fill!r} lies outside [min, max]")
    return problems


def _friendly(error: dict) -> str:
    """A pydantic error as a sentence naming the column and the fix."""
    loc = [str(p) for p in error["loc"]]
    if error["type"] == "value_error":
        return str(error["ctx"]["error"]) if "ctx" in error else error["msg"]
    column = f"column '{loc[1]}'" if len(loc) >= 2 and loc[0] == "columns" else "top level"
    key = loc[2] if len(loc) >= 3 and loc[0] == "columns" else loc[0] if loc else ""
    if error["type"] == "extra_forbidden":
        known = sorted(ColumnSpec.model_fields) if column != "top level" else sorted(DatasetSchema.model_fields)
        return f"{column}: unknown key `{key}`; the keys are {', '.join(known)}"
    if error["type"] == "missing":
        return f"{column}: `{key}:` is required"
    if error["type"] == "literal_error" and key == "type":
        return f"{column}: type {error['input']!r} is unknown; use one of {', '.join(ColumnType.__args__)}"
    return f"{column}: `{key}`: {error['msg']}" if key else f"{column}: {error['msg']}"


def load_schema(path: Path) -> DatasetSchema:
    if not path.is_file():
        raise SchemaError(f"{path}: schema file not found; set the dataset's `schema:` under `datasets:` in params.yaml")
    try:
        document = read_yaml(path)
    except yaml.YAMLError as error:
        raise SchemaError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("columns"), dict):
        raise SchemaError(f"{path}: expected a mapping with dataset, privacy_unit, target and `columns:` "
                          "(one entry per column); copy schemas/churn.yaml as a start")
    try:
        schema = DatasetSchema.model_validate(document)
        problems = feature_problems(schema)
    except ValidationError as error:
        problems = list(dict.fromkeys(line for e in error.errors() for line in _friendly(e).split("\n")))
    if problems:
        raise SchemaError(f"{path}: " + f"\n{path}: ".join(problems))
    return schema


def _time_bounds(spec: ColumnSpec) -> str:
    """Example bounds of a date or datetime column, written as its values are (its declared format)."""
    if not spec.format:
        return "min: 2000-01-01, max: 2030-12-31"
    low, high = (datetime(*day).strftime(spec.format) for day in ((2000, 1, 1), (2030, 12, 31)))
    return f"min: '{low}', max: '{high}'"
