"""Stage `encrypt`: seal the model-ready dataset and the quarantine.

Features are scaled by the bounds the schema declares, never by statistics of the private
rows (a mean or a min would itself leak and is not covered by the DP guarantee). The
train/test split is by person and by a keyed hash of the person's id, so a person never
sits on both sides and stays on the same side when new snapshots add rows.
"""

from __future__ import annotations

from privflow.artifacts import open_vault, stage_paths, write_json
from privflow.catalog import DATASET, decisions_identity
from privflow.data.dataset import seal_dataset
from privflow.data.schema_file import load_schema
from privflow.data.snapshot import open_snapshot
from privflow.data.validation import read_decisions
from privflow.errors import run_stage
from privflow.settings import load_settings


def main() -> None:
    args = stage_paths(__doc__, "snapshot", "decisions", "out")
    settings = load_settings(args.dataset)
    schema = load_schema(settings.validate_.schema_file)
    vault = open_vault()
    with open_snapshot(vault, args.snapshot) as (manifest, members):
        identity = decisions_identity(manifest.dataset, manifest.snapshot_id)
        outcome = read_decisions(vault, identity, args.decisions)
        description = seal_dataset(members, manifest, schema, outcome, settings, vault, args.out)
    write_json(args.out / DATASET, description)
    print(f"encrypt: sealed train {description['splits']['train']['rows']} rows, "
          f"test {description['splits']['test']['rows']} rows, {len(description['features'])} features")


if __name__ == "__main__":
    run_stage(main)
