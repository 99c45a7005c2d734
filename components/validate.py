"""Stage `validate`: check every row against the declared schema; quarantine, never drop.

Writes decisions only: which records are valid, and for each quarantined record the
(row, column, check) that failed. Values are never recorded outside the vault.
Invariant: rows_in = rows_valid + rows_quarantined + lines_unparseable.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pandera.pandas as pa

from components.artifacts import open_vault, stage_paths, write_json
from components.errors import RejectRateExceeded, SchemaError, run_stage
from components.ingest import open_snapshot
from components.records import UNPARSEABLE, RowFailure, coerce_columns, parse_source
from components.schema import DatasetSchema, load_schema, to_pandera
from components.settings import IngestSettings, load_settings
from components.sources import SourceFile
from components.vault import ArtifactIdentity, Vault

DECISIONS = "decisions.sealed"


@dataclass(frozen=True)
class ValidationOutcome:
    rows_in: int
    valid_rows: list[int]
    failures: list[RowFailure]  # at most one per (row, column); column "*" = unparseable

    @property
    def unparseable_rows(self) -> set[int]:
        return {f.row for f in self.failures if f.column == UNPARSEABLE}

    @property
    def quarantined_rows(self) -> set[int]:
        return {f.row for f in self.failures} - self.unparseable_rows

    def summary(self) -> dict:
        by_check = Counter(f"{f.column}/{f.check}" for f in self.failures)
        rejected = self.rows_in - len(self.valid_rows)
        return {
            "rows_in": self.rows_in,
            "rows_valid": len(self.valid_rows),
            "rows_quarantined": len(self.quarantined_rows),
            "lines_unparseable": len(self.unparseable_rows),
            "reject_rate": rejected / self.rows_in if self.rows_in else 0.0,
            "failures_by_check": dict(sorted(by_check.items())),
        }


def _schema_failures(typed: pd.DataFrame, schema: DatasetSchema) -> list[RowFailure]:
    try:
        to_pandera(schema).validate(typed, lazy=True)
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases
        whole_column = cases[cases["index"].isna()]
        if len(whole_column):
            checks = sorted({f"{c}/{k}" for c, k in zip(whole_column["column"], whole_column["check"])})
            raise SchemaError(f"column-level schema failures {checks}: check the schema's types") from None
        return [RowFailure(int(r), str(c), str(k))
                for r, c, k in zip(cases["index"], cases["column"], cases["check"])]
    return []


def check_rows(typed: pd.DataFrame, coercion: list[RowFailure], schema: DatasetSchema) -> list[RowFailure]:
    """All failures, at most one per (row, column): a failed coercion explains the rest."""
    seen: dict[tuple[int, str], RowFailure] = {}
    for failure in coercion + _schema_failures(typed, schema):
        seen.setdefault((failure.row, failure.column), failure)
    return sorted(seen.values())


def validate_snapshot(files: list[SourceFile], source: str, schema: DatasetSchema,
                      settings: IngestSettings) -> tuple[pd.DataFrame, ValidationOutcome]:
    """Typed frame of parsed records and the decision for every record of the snapshot."""
    table = parse_source(files, source, schema, delimiter=settings.delimiter, encoding=settings.encoding)
    typed, coercion = coerce_columns(table.frame, schema)
    failures = table.unparseable + check_rows(typed, coercion, schema)
    bad = {f.row for f in failures}
    valid = [int(r) for r in typed.index if r not in bad]
    return typed, ValidationOutcome(table.rows_in, valid, failures)


def enforce_reject_rate(outcome: ValidationOutcome, max_rate: float, source: str) -> None:
    summary = outcome.summary()
    if summary["reject_rate"] > max_rate:
        top = ", ".join(f"{k}: {v}" for k, v in Counter(summary["failures_by_check"]).most_common(5))
        raise RejectRateExceeded(
            f"{source}: {summary['rows_in'] - summary['rows_valid']} of {summary['rows_in']} rows "
            f"rejected ({summary['reject_rate']:.1%} > validate.max_reject_rate {max_rate:.1%}); "
            f"most frequent: {top}. Fix the export or the schema, or raise the limit"
        )


def decisions_identity(dataset: str, snapshot_id: str) -> ArtifactIdentity:
    return ArtifactIdentity(dataset, "validate", DECISIONS, snapshot_id)


def write_decisions(outcome: ValidationOutcome, identity: ArtifactIdentity, vault: Vault, out_dir: Path) -> None:
    document = {"rows_in": outcome.rows_in, "valid_rows": outcome.valid_rows,
                "failures": [[f.row, f.column, f.check] for f in outcome.failures]}
    vault.seal(json.dumps(document).encode(), identity, out_dir / DECISIONS)


def read_decisions(vault: Vault, identity: ArtifactIdentity, out_dir: Path) -> ValidationOutcome:
    document = json.loads(vault.open(out_dir / DECISIONS, identity))
    failures = [RowFailure(r, c, k) for r, c, k in document["failures"]]
    return ValidationOutcome(document["rows_in"], document["valid_rows"], failures)


def main() -> None:
    args = stage_paths(__doc__, "snapshot", "out", "metrics")
    settings = load_settings()
    schema = load_schema(settings.validate_.schema_file)
    vault = open_vault()
    manifest, files = open_snapshot(vault, args.snapshot)
    _, outcome = validate_snapshot(files, manifest.source, schema, settings.ingest)
    del files
    enforce_reject_rate(outcome, settings.validate_.max_reject_rate, manifest.source)
    write_decisions(outcome, decisions_identity(manifest.dataset, manifest.snapshot_id), vault, args.out)
    summary = outcome.summary()
    write_json(args.metrics, {"snapshot_id": manifest.snapshot_id, **summary})
    print(f"validate: {summary['rows_valid']} valid, {summary['rows_quarantined']} quarantined, "
          f"{summary['lines_unparseable']} unparseable of {summary['rows_in']} rows")


if __name__ == "__main__":
    run_stage(main)
