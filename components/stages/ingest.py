"""Stage `ingest`: seal a versioned snapshot of the source and describe it.

The snapshot id is a keyed digest of the source bytes (HMAC under the keyring's snapshot-id
key), so re-ingesting identical bytes yields the same id, and it tells no one without the
keyring anything about them. It travels through every later artifact to the model and the report (lineage).
The manifest holds no time: identical bytes give identical outputs (and DVC hashes), so
nothing downstream re-runs. When each snapshot was taken goes to an append-only log.
"""

from __future__ import annotations

from privflow.artifacts import open_vault, stage_paths
from privflow.data.snapshot import ingest_snapshot
from privflow.errors import run_stage
from privflow.preflight import check_dataset
from privflow.settings import load_settings


def main() -> None:
    args = stage_paths(__doc__, "out")
    settings = load_settings(args.dataset)
    schema = check_dataset(settings)  # a schema or model-shape mistake is refused before a byte is read
    manifest = ingest_snapshot(settings.dataset.name, settings.ingest, open_vault(), args.out, schema)
    print(f"ingest: {manifest.rows} rows, {manifest.header_fields} columns"
          f"{'' if manifest.header_matches_schema else ' (header does not name the schema columns; validate will say how)'}, "
          f"snapshot {manifest.snapshot_id[:19]}, sealed under {manifest.key_id}")


if __name__ == "__main__":
    run_stage(main)
