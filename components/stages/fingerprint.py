"""Stage `fingerprint`: every source's keyed snapshot id, the only thing of it dvc.lock records.

DVC runs it on every `dvc repro` (it has no deps, and dvc.yaml marks it always_changed) and
re-runs a dataset's ingest only when the id written for it changes: so a changed source is
noticed as before, while dvc.lock, which teams commit, holds a digest of this file and never
one of the private bytes (privflow.data.fingerprint says why, and why one stage serves every
dataset). Unchanged files are not read again.

It also writes what each stage of each dataset reads of the settings
(artifacts/fingerprints/<stage>/<dataset>.json, privflow.stage_settings): a stage depends on
its file rather than on the dataset's whole entry, so an edit re-runs only the stages that
read it (a report title re-runs the report; no training, no ε).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from privflow.data.fingerprint import take_fingerprints
from privflow.errors import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="the folder of the fingerprints, one file a dataset")
    args = parser.parse_args()
    news = take_fingerprints(Path("."), args.out)
    for dataset, said in news.items():
        print(f"fingerprint of {dataset}: source {said}")


if __name__ == "__main__":
    run_stage(main)
