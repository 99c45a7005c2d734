"""Start-up and no-op costs of the CLI and the stages, side by side in one run (issue 19).

Run in a project whose pipeline is up to date (after `make run`): a no-op `privflow run`
against a no-op `dvc repro` of the same DAG, `privflow status` against `dvc status`,
`privflow --help`, and each stage module's import floor against a bare `import torch`.
Wall times are the best of several runs (this machine is noisy); the ratios are the figures.
Goals: no-op run <= 3x dvc repro and <= 60 lines; --help <= 0.5 s; status <= 2x dvc status;
train's import floor <= 1.5x torch, ingest/validate/encrypt <= 0.3x.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench-results" / "cli.json"
# the project measured: this checkout after `make run`, or another finished one
PROJECT = Path(os.environ.get("PRIVFLOW_BENCH_PROJECT", ROOT))
BIN = Path(sys.executable).parent


def best(command: list[str], repeats: int) -> tuple[float, int]:
    """Best wall time of `command` in the project, and the lines it printed (stdout + stderr)."""
    timings, lines = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, check=False)
        timings.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed: {done.stderr[-500:]}")
        lines = len((done.stdout + done.stderr).splitlines())
    return min(timings), lines


def import_floor(module: str, repeats: int = 3) -> float:
    return best([sys.executable, "-c", f"import {module}"], repeats)[0]


def main() -> None:
    if not (PROJECT / "dvc.lock").exists():
        raise SystemExit("no dvc.lock: run `make run` first, then `make bench`")
    privflow, dvc = str(BIN / "privflow"), [sys.executable, "-m", "dvc"]
    if "up to date" not in subprocess.run([*dvc, "status"], cwd=PROJECT, capture_output=True, text=True).stdout:
        raise SystemExit(f"{PROJECT}: the pipeline is not up to date: `privflow run` first, then `make bench`")
    run, run_lines = best([privflow, "run", "--yes"], 2)
    repro, _ = best([*dvc, "repro"], 2)
    status, _ = best([privflow, "status"], 3)
    dvc_status, _ = best([*dvc, "status"], 3)
    help_time, _ = best([privflow, "--help"], 5)
    torch_floor = import_floor("torch")
    floors = {stage: import_floor(f"privflow.stages.{stage}") for stage in ("ingest", "validate", "encrypt", "train")}
    rows = [
        ("no-op privflow run / no-op dvc repro", run / repro, 3.0, f"{run:.1f} s / {repro:.1f} s"),
        ("lines printed by a no-op privflow run", run_lines, 60, ""),
        ("privflow --help (s)", help_time, 0.5, ""),
        ("privflow status / dvc status", status / dvc_status, 2.0, f"{status:.1f} s / {dvc_status:.1f} s"),
        *((f"import floor of {stage} / import torch", floor / torch_floor, 1.5 if stage == "train" else 0.3,
           f"{floor:.2f} s / {torch_floor:.2f} s") for stage, floor in floors.items()),
    ]
    table = Table("measure", "value", "goal", "times", title="privflow start-up, side by side")
    for name, value, goal, times in rows:
        table.add_row(name, f"{value:.2f}" if isinstance(value, float) else str(value),
                      f"<= {goal:g}" + (" (met)" if value <= goal else " (not met)"), times)
    Console().print(table)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps([{"measure": n, "value": v, "goal": g, "times": t} for n, v, g, t in rows], indent=2))


if __name__ == "__main__":
    main()
