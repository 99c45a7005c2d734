"""Start-up and no-op costs of the CLI and the stages, side by side in one run (issue 19).

In a fresh demo project (`privflow init --demo` in a temporary folder): a full run from
scratch, whose start-up overhead is its wall time minus the time the stages spent in their
own work (each stage's `privflow timing:` line in the run's log), and beside it the same run
in a second project with the stage host turned off (`PRIVFLOW_STAGE_HOST=none`: every stage
imports its libraries itself, as under plain `dvc repro`); then, with everything up to
date, a no-op `privflow run` against a no-op `dvc repro` of the same DAG, `privflow status`
against `dvc status`; `privflow --help`; Prefect's temporary server in a new project, its
database migrated (a new machine) against seeded from the template (one that ran privflow
before); each stage module's import floor against a bare `import torch`. Wall times of the quick commands are the best of several (this machine is
noisy); the ratios are the figures. Goals: overhead <= 20% of the full run; no-op run <= 3x
dvc repro and <= 60 lines; --help <= 0.5 s; status <= 2x dvc status; train's import floor
<= 1.5x torch, ingest/validate/encrypt <= 0.3x.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench-results" / "cli.json"
BIN = Path(sys.executable).parent
BASE = Path(tempfile.mkdtemp(prefix="privflow-bench-"))
atexit.register(shutil.rmtree, BASE, ignore_errors=True)  # it holds the demo's sources and keyrings
PROJECT = BASE / "demo"


def project_env(project: Path) -> dict:
    """A project's own keyring, ledger and cache, beside it: each full run starts as on a new
    machine (its Prefect server migrates a new database; see server_start)."""
    return {**{k: v for k, v in os.environ.items() if k != "PRIVFLOW_STAGE_HOST"},
            "PRIVFLOW_KEYRING": str(project.parent / f"{project.name}-keyring.json"),
            "PRIVFLOW_LEDGER": str(project.parent / f"{project.name}-ledger.sqlite"),
            "XDG_CACHE_HOME": str(project.parent / f"{project.name}-cache"),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def server_start(home: Path, cache: Path) -> float:
    """Seconds until Prefect's temporary server answers in a new project (PREFECT_HOME = home)."""
    code = ("import time; from privflow.flows.server import warm_temporary_server as w; "
            "t = time.perf_counter(); w().result(); print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_HOME": str(home), "XDG_CACHE_HOME": str(cache), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    return float(out.stdout.split()[-1])


def server_starts(repeats: int = 3) -> tuple[float, float]:
    """Best start of the server in a new project on a new machine (its database migrated) and
    on one that has run privflow before (seeded from the template), interleaved."""
    servers = BASE / "servers"
    server_start(servers / "first", servers / "cache")  # this machine's first: it leaves the template
    migrated, seeded = [], []
    for attempt in range(repeats):
        migrated.append(server_start(servers / f"new-{attempt}", servers / f"cache-{attempt}"))
        seeded.append(server_start(servers / f"seeded-{attempt}", servers / "cache"))
    return min(migrated), min(seeded)


def best(command: list[str], repeats: int, project: Path = PROJECT, **env: str) -> tuple[float, int]:
    """Best wall time of `command` in the project, and the lines it printed (stdout + stderr)."""
    timings, lines = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(command, cwd=project, env={**project_env(project), **env}, capture_output=True,
                              text=True, check=False)
        timings.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed: {done.stderr[-500:]}")
        lines = len((done.stdout + done.stderr).splitlines())
    return min(timings), lines


def import_floor(module: str, repeats: int = 3) -> float:
    return best([sys.executable, "-c", f"import {module}"], repeats)[0]


def full_run(privflow: str, project: Path, **env: str) -> tuple[float, float, int, int]:
    """A demo run from scratch: its wall time, the stages' own work (from its log), stages run,
    lines printed."""
    subprocess.run([privflow, "init", str(project), "--demo"], env=project_env(project), capture_output=True,
                   check=True)
    wall, lines = best([privflow, "run", "--yes"], 1, project, **env)
    (log,) = (project / ".privflow" / "logs").glob("*.log")
    worked = [float(s) for s in re.findall(r"^privflow timing: \S+ worked ([\d.]+) s$", log.read_text(), re.M)]
    return wall, sum(worked), len(worked), lines


def main() -> None:
    privflow, dvc = str(BIN / "privflow"), [sys.executable, "-m", "dvc"]
    wall, worked, stages, full_lines = full_run(privflow, PROJECT)
    alone_wall, alone_worked, _, _ = full_run(privflow, BASE / "unhosted", PRIVFLOW_STAGE_HOST="none")
    run, run_lines = best([privflow, "run", "--yes"], 2)
    repro, _ = best([*dvc, "repro"], 2)
    status, _ = best([privflow, "status"], 3)
    dvc_status, _ = best([*dvc, "status"], 3)
    help_time, _ = best([privflow, "--help"], 5)
    migrated, seeded = server_starts()
    torch_floor = import_floor("torch")
    floors = {stage: import_floor(f"privflow.stages.{stage}") for stage in ("ingest", "validate", "encrypt", "train")}
    rows = [
        (f"start-up overhead of a full demo run ({stages} stages)", (wall - worked) / wall, 0.2,
         f"{wall:.0f} s wall, {worked:.0f} s in the stages' own work"),
        ("the same, each stage importing its own libraries (no stage host)", (alone_wall - alone_worked) / alone_wall,
         0.2, f"{alone_wall:.0f} s wall, {alone_worked:.0f} s in the stages' own work"),
        ("lines printed by that full run", full_lines, 60, ""),
        ("Prefect server start, new project: seeded / migrated database", seeded / migrated, 1.0,
         f"{seeded:.1f} s / {migrated:.1f} s"),
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
