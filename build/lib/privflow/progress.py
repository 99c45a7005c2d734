"""How far a running stage has got, for `privflow run`'s live table: a tiny JSON file per
stage in the folder the run names in PRIVFLOW_PROGRESS_DIR (a stage run by plain `dvc repro`
writes nothing). Only counters and the privacy spent so far: never a row, a label or a metric
of the data."""

from __future__ import annotations

import json
import os
from pathlib import Path

PROGRESS_DIR_ENV = "PRIVFLOW_PROGRESS_DIR"


def report_progress(stage: str, **counters: float) -> None:
    """Replace the stage's progress file (atomically: the reader never sees half a file)."""
    folder = os.environ.get(PROGRESS_DIR_ENV)
    if not folder:
        return
    path = Path(folder) / f"{stage}.json"
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(counters), encoding="utf-8")
    os.replace(partial, path)


def read_progress(folder: Path, stage: str) -> dict:
    """The stage's latest counters, or {} before its first report."""
    try:
        return json.loads((folder / f"{stage}.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
