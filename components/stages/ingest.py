"""Stage `ingest`: seal a versioned snapshot of the source and describe it.

The snapshot id is a keyed digest of the source bytes (HMAC under the keyring's snapshot-id
key), so re-ingesting identical bytes yields the same id, and it tells no one without the
keyring anything about them. DVC sees the source only through that id (the fingerprint
stage's file, ingest's dep): bytes that no longer match it are refused. The id travels
through every later artifact to the model and the report (lineage).
The manifest holds no time: identical bytes give identical outputs (and DVC hashes), so
nothing downstream re-runs. When each snapshot was taken goes to an append-only log.
"""

from __future__ import annotations

from privflow.artifacts import open_vault, stage_paths
from privflow.data.fingerprint import read_fingerprint
from privflow.data.snapshot import ingest_snapshot
from privflow.errors import DatasetError, run_stage
from privflow.preflight import check_dataset
from privflow.settings import load_settings


def main() -> None:
    args = stage_paths(__doc__, "fingerprint", "out")
    settings = load_settings(args.dataset)
    schema = check_dataset(settings)  # a schema or model-shape mistake is refused before a byte is read
    fingerprint = read_fingerprint(args.fingerprint)
    if not fingerprint:
        raise DatasetError(f"{args.fingerprint}: missing or unreadable; it is the fingerprint stage's output "
                           f"(`dvc repro ingest@{args.dataset}` runs that stage first)")
    if "unavailable" in fingerprint:  # the fingerprint stage could not read the source, and says why
        raise DatasetError(fingerprint["unavailable"])
    manifest = ingest_snapshot(settings.dataset.name, settings.ingest, open_vault(), args.out, schema,
                               expected_id=fingerprint["snapshot_id"])
    print(f"ingest: {manifest.rows} rows, {manifest.header_fields} columns"
          f"{'' if manifest.header_matches_schema else ' (header does not name the schema columns; validate will say how)'}, "
          f"snapshot {manifest.snapshot_id[:19]}, sealed under {manifest.key_id}")


if __name__ == "__main__":
    run_stage(main)
