"""A dataset schema as pandera checks, for a frame `records.coerce_batch` has typed.

pandera (and pandas) load here, not with the schema: ingest and encrypt read schemas and
never check rows, and their preflight must not pay for the import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from privflow.data.schema import PANDAS_DTYPE, TIME_TYPES, ColumnSpec, DatasetSchema

if TYPE_CHECKING:
    import pandera.pandas as pa


def text_length_check(max_chars: int) -> pa.Check:
    """Quarantines a text longer than the schema allows, under a name that says so."""
    import pandera.pandas as pa

    return pa.Check(lambda texts: texts.str.len() <= max_chars, name=f"longer_than_max_chars_{max_chars}")


def _checks(spec: ColumnSpec) -> list[pa.Check]:
    import pandas as pd
    import pandera.pandas as pa

    checks = []
    low = None if spec.min is None else spec.typed(spec.min, "min")
    high = None if spec.max is None else spec.typed(spec.max, "max")
    if low is not None:
        checks.append(pa.Check.ge(pd.Timestamp(low) if spec.type in TIME_TYPES else low))
    if high is not None:
        checks.append(pa.Check.le(pd.Timestamp(high) if spec.type in TIME_TYPES else high))
    if spec.allowed is not None:
        values = spec.allowed_values
        checks.append(pa.Check.isin([pd.Timestamp(v) for v in values] if spec.type in TIME_TYPES else values))
    if spec.regex is not None:
        checks.append(pa.Check.str_matches(spec.regex))
    if spec.type == "text" and spec.max_chars:
        checks.append(text_length_check(spec.max_chars))
    return checks


def to_pandera(schema: DatasetSchema, *, unique: bool = True) -> pa.DataFrameSchema:
    """The pandera schema for a frame already coerced by `records.coerce_batch`.

    `unique=False` leaves uniqueness out, for callers that check it across batches. pandera
    (and pandas) load here, not with the module: ingest and encrypt read schemas, never check rows.
    """
    import pandera.pandas as pa

    return pa.DataFrameSchema(
        {
            name: pa.Column(PANDAS_DTYPE[spec.type], _checks(spec),
                            nullable=spec.nullable, unique=spec.unique and unique)
            for name, spec in schema.columns.items()
        },
        strict=schema.strict,
        coerce=False,
    )
