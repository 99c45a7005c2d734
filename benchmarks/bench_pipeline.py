"""Pipeline timings: a full run through the Prefect flow, and a no-op `dvc repro`.

Runs on a throw-away copy of the project with the bundled demo data and the project's
params.yaml, so the numbers are what `make run` costs on this machine.
Goals (issue 2): end to end <= 120 s, no-op repro <= 2 s on a 2-core machine.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from privflow.demo_data import demo_table  # noqa: E402
from tests.workspace import make_workspace  # noqa: E402

OUT = ROOT / "bench-results" / "pipeline.json"


def timed(workspace, *command: str) -> float:
    start = time.perf_counter()
    workspace.run(*command, check=True)
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as base:
        header, rows = demo_table()
        workspace = make_workspace(Path(base), header, rows, churn=True)  # two datasets, as `make run`
        workspace.edit_params(train={"epochs": 30})  # the project's default, not the tests' 5
        workspace.edit_dataset("churn", train={"epochs": 10, "batch_size": 256, "learning_rate": 0.3})
        full = timed(workspace, "privflow", "run")
        noop_flow = timed(workspace, "privflow", "run")
        noop_repro = [timed(workspace, "dvc", "repro") for _ in range(5)]
    rows_out = [
        ("full pipeline, Prefect flow (cold start)", full, 120.0),
        ("no-op run, Prefect flow (cold start)", noop_flow, None),
        ("no-op `dvc repro`, median of 5", statistics.median(noop_repro), 2.0),
    ]
    table = Table("measurement", "seconds", "goal", "met", title="privflow pipeline benchmark")
    for name, seconds, goal in rows_out:
        table.add_row(name, f"{seconds:.2f}", f"<= {goal:g}" if goal else "-",
                      ("yes" if seconds <= goal else "NO") if goal else "-")
    Console().print(table)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "results": [{"name": n, "seconds": s, "goal_seconds": g} for n, s, g in rows_out],
        "noop_repro_samples": noop_repro,
    }, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
