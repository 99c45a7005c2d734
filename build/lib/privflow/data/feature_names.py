"""The model's input columns, known from the schema before any row is read: what the
preflight checks a model preset against, and the order privflow.data.features encodes in.
Kept apart from features (pandas) so the preflight of ingest loads no data library."""

from __future__ import annotations

from privflow.data.schema import DatasetSchema

MISSING_SUFFIX = ":missing"


def feature_names(schema: DatasetSchema) -> list[str]:
    """The model's input columns, in order: known before any row is read."""
    names = []
    for name in schema.feature_columns:
        spec = schema.columns[name]
        if spec.type == "string":
            names += [f"{name}={level}" for level in spec.allowed_values]
            continue
        names.append(name)
        if spec.nullable:
            names.append(name + MISSING_SUFFIX)
    return names
