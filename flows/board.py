"""What `privflow run` shows while it works: on a terminal one live table (dataset x stage),
elsewhere (CI, cron) one plain line per stage as it ends; then a summary per dataset. The
pipeline announces each stage's start and end here; whoever watches draws it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table

from privflow.progress import read_progress

QUEUED, RUNNING, RAN, UP_TO_DATE, FAILED = "queued", "running", "ran", "up to date", "failed"
NOT_RUN = "not run"  # its dataset stopped at a failed stage before it

_boards: list[StageBoard] = []  # the boards watching this process's pipeline (none when scheduled)


def announce(stage: str, state: str) -> None:
    """The pipeline says a stage started (RUNNING) or ended (RAN, UP_TO_DATE, FAILED), or that
    it will not run (NOT_RUN)."""
    for board in list(_boards):
        board.update(stage, state)


def watched() -> bool:
    """Whether a board in this process shows the pipeline (`privflow run`); a run Prefect started
    in a process of its own (a schedule, a deployment's worker) has none."""
    return bool(_boards)


def say(text: str) -> None:
    """A line the person running privflow should read now (e.g. that the run waits for another)."""
    for board in list(_boards):
        board.console.print(text)


@dataclass
class _Stage:
    state: str = QUEUED
    started: float | None = None
    seconds: float | None = None


@dataclass
class StageBoard:
    """The run's stages and their states; a live table on a terminal, plain lines otherwise."""

    stages: list[str]
    out: TextIO
    live: bool
    progress_dir: Path | None = None
    rows: dict[str, _Stage] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rows = {stage: _Stage() for stage in self.stages}
        self.console = Console(file=self.out, soft_wrap=True, highlight=False)
        self._live: Live | None = None

    def __enter__(self) -> StageBoard:
        _boards.append(self)
        if self.live:
            # stdout and stderr stay as they are: they go to the run's log, never onto the table
            self._live = Live(get_renderable=self.table, console=self.console, refresh_per_second=4,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        _boards.remove(self)
        if self._live is not None:
            self._live.stop()

    def update(self, stage: str, state: str) -> None:
        row = self.rows.setdefault(stage, _Stage())
        if state == row.state:  # said again (datasets side by side: the flow repeats what a worker said)
            return
        now = time.monotonic()
        if state == RUNNING:
            row.started = now
        elif row.started is not None:
            row.seconds = now - row.started
        row.state = state
        if not self.live and state != RUNNING:
            took = f" in {row.seconds:.1f} s" if state in (RAN, FAILED) and row.seconds is not None else ""
            self.console.print(f"{stage}: {state}{took}")

    def cell(self, stage: str) -> str:
        row = self.rows.get(stage)
        if row is None:
            return ""
        if row.state == RUNNING:
            text = f"[yellow]running {time.monotonic() - (row.started or time.monotonic()):.0f}s[/yellow]"
            done = read_progress(self.progress_dir, stage) if self.progress_dir else {}
            if done:
                text += f" epoch {done['epoch']}/{done['epochs']}, ε {done['epsilon']:.2f}"
            return text
        colour = {RAN: "green", FAILED: "red", UP_TO_DATE: "dim", QUEUED: "dim", NOT_RUN: "yellow"}[row.state]
        took = f" {row.seconds:.0f}s" if row.state in (RAN, FAILED) and row.seconds is not None else ""
        return f"[{colour}]{row.state}{took}[/{colour}]"

    def table(self) -> Table:
        """A row per stage, a column per dataset: stages are few and fixed, datasets are the user's.
        A stage shared by every dataset (`fingerprint`) shows its one state in each column."""
        kinds = list(dict.fromkeys(stage.partition("@")[0] for stage in self.stages))
        datasets = list(dict.fromkeys(stage.partition("@")[2] for stage in self.stages if "@" in stage))
        table = Table("stage", *datasets)
        for kind in kinds:
            shared = kind in self.rows
            table.add_row(kind, *(self.cell(kind if shared else f"{kind}@{dataset}") for dataset in datasets))
        return table
