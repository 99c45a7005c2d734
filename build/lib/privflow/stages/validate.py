"""Stage `validate`: check every row against the declared schema; quarantine, never drop.

Writes decisions only: which records are valid, and for each quarantined record the
(row, column, check) that failed. Values are never recorded outside the vault.
Invariant: rows_in = rows_valid + rows_quarantined + lines_unparseable.
"""

from __future__ import annotations

from privflow.artifacts import open_vault, stage_paths, write_json
from privflow.catalog import decisions_identity
from privflow.data.schema_file import load_schema
from privflow.data.snapshot import open_snapshot
from privflow.data.validation import enforce_reject_rate, validate_snapshot, write_decisions
from privflow.errors import run_stage
from privflow.settings import load_settings


def main() -> None:
    args = stage_paths(__doc__, "snapshot", "out", "metrics")
    settings = load_settings(args.dataset)
    schema = load_schema(settings.validate_.schema_file)
    vault = open_vault()
    with open_snapshot(vault, args.snapshot) as (manifest, members):
        outcome = validate_snapshot(members, manifest.source, schema, settings.ingest)
    enforce_reject_rate(outcome, settings.validate_.max_reject_rate, manifest.source)
    write_decisions(outcome, decisions_identity(manifest.dataset, manifest.snapshot_id), vault, args.out)
    summary = outcome.summary()
    write_json(args.metrics, {"snapshot_id": manifest.snapshot_id, **summary})
    print(f"validate: {summary['rows_valid']} valid, {summary['rows_quarantined']} quarantined, "
          f"{summary['lines_unparseable']} unparseable of {summary['rows_in']} rows")


if __name__ == "__main__":
    run_stage(main)
