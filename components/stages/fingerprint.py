"""Stage `fingerprint`: the source's keyed snapshot id, the only thing of it dvc.lock records.

DVC runs it on every `dvc repro` (it has no deps, and dvc.yaml marks it always_changed) and
re-runs ingest only when the id it writes changes: so a changed source is noticed as before,
while dvc.lock, which teams commit, holds a digest of this file and never one of the private
bytes (privflow.data.fingerprint says why). Unchanged files are not read again.
"""

from __future__ import annotations

from privflow.artifacts import open_vault, stage_paths
from privflow.data.fingerprint import refresh_fingerprint
from privflow.errors import run_stage
from privflow.settings import load_settings


def main() -> None:
    args = stage_paths(__doc__, "out")
    settings = load_settings(args.dataset)
    keyed, changed = refresh_fingerprint(settings.dataset.name, settings.ingest.source, open_vault(), args.out)
    print(f"fingerprint: source {'changed' if changed else 'unchanged'}, snapshot {keyed[:19]}")


if __name__ == "__main__":
    run_stage(main)
