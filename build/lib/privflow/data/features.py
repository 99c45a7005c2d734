"""Typed rows -> model inputs and class indices, from the schema alone.

Every number here comes from the schema's declarations, never from statistics of the
private rows (a mean, a min or a vocabulary read from the data would itself leak, outside
the DP guarantee):
- a numeric, date or datetime feature is scaled by its declared [min, max] into [0, 1];
- a nullable one is filled with its declared `fill` (default: `min`) and gets a
  `<name>:missing` indicator, so the model can tell a filled value from a real one;
- a bool is 0/1 (a nullable one also gets an indicator); a string with `allowed` is one-hot;
  free text (a string without `allowed`) is never a model input;
- a `text` column is carried as it was written (in memory, then sealed), for a pretrained
  text encoder to tokenize inside the stage that trains;
- the target's values map to class indices in the order of its `allowed` list, compared
  in the column's own type (an int8 0/1 target is compared with 0 and 1, not "0" and "1").

Used by encrypt, pretrain, predict and explain alike, so the columns a model reads are the
same wherever rows are encoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from privflow.data.feature_names import feature_names
from privflow.data.schema import TIME_TYPES, ColumnSpec, DatasetSchema
from privflow.errors import SchemaError

NO_LABEL = -1


@dataclass(frozen=True)
class EncodedData:
    features: np.ndarray  # float32, rows x features, each in [0, 1]
    labels: np.ndarray    # int64 class index in schema order; NO_LABEL where the target is missing
    units: np.ndarray     # privacy-unit ids, kept only to split and to count rows per person
    feature_names: list[str]
    texts: dict[str, np.ndarray] = field(default_factory=dict)  # text column -> the texts (object array)


def _as_float(values: pd.Series, spec: ColumnSpec) -> np.ndarray:
    """Numbers, or seconds since the epoch for dates and times; NaN where missing."""
    if spec.type in TIME_TYPES:
        seconds = values.to_numpy(dtype="datetime64[ns]", na_value=np.datetime64("NaT")).astype("int64") / 1e9
        return np.where(values.isna().to_numpy(), np.nan, seconds)
    return values.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)


def _scalar(spec: ColumnSpec, value) -> float:
    """A declared bound or fill on the same number line as `_as_float`."""
    return pd.Timestamp(value).value / 1e9 if spec.type in TIME_TYPES else float(value)


def _encode_column(values: pd.Series, spec: ColumnSpec) -> list[np.ndarray]:
    missing = values.isna().to_numpy()
    if spec.type == "string":
        return [(values == level).fillna(False).to_numpy(dtype=np.float32) for level in spec.allowed_values]
    if spec.type == "bool":
        fill = spec.typed(spec.fill, "fill") if spec.fill is not None else False
        encoded = [values.fillna(fill).to_numpy(dtype=np.float32)]
    else:
        low, high = spec.bounds
        if low is None or high is None:  # load_schema refuses this; kept for a hand-built schema
            raise SchemaError("a numeric feature needs min and max in the schema: they scale it without "
                              "spending privacy budget")
        low, high = _scalar(spec, low), _scalar(spec, high)
        fill = _scalar(spec, spec.fill) if spec.fill is not None else low
        scaled = (np.where(missing, fill, _as_float(values, spec)) - low) / (high - low)
        encoded = [np.clip(scaled, 0.0, 1.0).astype(np.float32)]
    if spec.nullable:
        encoded.append(missing.astype(np.float32))
    return encoded


def class_indices(values: pd.Series, spec: ColumnSpec) -> np.ndarray:
    """Each value's position in the target's `allowed` list, compared in the column's type;
    NO_LABEL where the value is missing or not listed (validation quarantines those rows)."""
    position = {value: index for index, value in enumerate(spec.allowed_values)}
    mapped = values.astype(object).map(lambda v: position.get(v, NO_LABEL) if not pd.isna(v) else NO_LABEL)
    return mapped.to_numpy(dtype=np.int64)


def encode_features(typed: pd.DataFrame, schema: DatasetSchema) -> EncodedData:
    columns = [part for name in schema.feature_columns for part in _encode_column(typed[name], schema.columns[name])]
    features = np.stack(columns, axis=1) if columns else np.empty((len(typed), 0), np.float32)
    texts = {name: typed[name].astype(object).to_numpy() for name in schema.text_columns}
    return EncodedData(features, class_indices(typed[schema.target], schema.target_spec),
                       typed[schema.privacy_unit].astype(str).to_numpy(), feature_names(schema), texts)
