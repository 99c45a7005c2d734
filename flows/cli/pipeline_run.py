"""`privflow run` once its plan is made: the Prefect flow with its board and its log, then what
did not run and why (a dataset whose source cannot be read, a stage that failed), and the
command that takes it up again."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

import typer
from rich.console import Console

from privflow.errors import PrivflowError
from privflow.flows.cli.common import console
from privflow.flows.errors_said import quiet_tracebacks
from privflow.flows.run_output import failure_lines, stopped_datasets
from privflow.flows.stages import DatasetsFailed, StageFailed


def say_lost_sources(lost: dict[str, str]) -> None:
    """Each dataset whose source cannot be read, and why (the fingerprint's words: the file and
    the setting to fix)."""
    for name, why in lost.items():
        console.print(f"privflow: dataset {name} does not run: its source cannot be read: {why}", style="red",
                      highlight=False)


def stop_unless_all_ran(lost: dict[str, str], failures: list[StageFailed], log: Path | None, verbose: bool,
                        chosen: Sequence[str] = ()) -> None:
    """Exit 2 if a dataset did not run to its end: each failed stage's own words (from the run's
    log), then one line naming every such dataset and the command that takes them up again."""
    if lost and log is not None:  # said before the run; again where it ends
        say_lost_sources(lost)
    again = " ".join(["privflow run", *(f"-d {name}" for name in [*lost, *stopped_datasets(failures, chosen)])])
    if failures:
        errors = Console(stderr=True, soft_wrap=True, highlight=False, markup=False)
        for line in failure_lines(failures, None if verbose else log):
            errors.print(line, style="red")
        stages = ", ".join(failure.stage for failure in failures)
        errors.print(f"next: fix what {'stages' if len(failures) > 1 else 'stage'} {stages} said above (full output: "
                     f"{log}), then `{again}` again; stages that finished are not run again")
        raise typer.Exit(2)
    if lost:
        raise PrivflowError(f"not run: {', '.join(lost)}; fix the source named above, then `{again}`")


def run_flow(root: Path, datasets: list[str] | None, stages: list[str], workers: int, dask_address: str | None,
             verbose: bool, server: Future | None = None) -> tuple[set[str], list[StageFailed], Path]:
    """The Prefect flow, its output in the run's log (and, verbose, on the terminal), a board on the terminal.
    Returns the stages that ran, the stages that failed (each stopped its own dataset only) and
    the log."""
    from privflow.flows.board import StageBoard
    from privflow.flows.pipeline import pipeline, text_model_in
    from privflow.flows.run_output import end_run_log, new_log_path
    from privflow.flows.streams import output_shown_and_logged, output_to_log
    from privflow.flows.server import temporary_api
    from privflow.progress import PROGRESS_DIR_ENV
    from privflow.stagehost import share_cores
    from privflow.stageserver import stage_host

    quiet_tracebacks()
    flow = pipeline
    if workers > 1 or dask_address:
        from prefect_dask import DaskTaskRunner

        if not dask_address:  # a local cluster's workers, and their stages, share this machine's cores
            share_cores(workers)
        runner = DaskTaskRunner(address=dask_address) if dask_address else DaskTaskRunner(
            cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})
        flow = pipeline.with_options(task_runner=runner)
    log = new_log_path(root)
    progress = log.with_suffix(".progress")
    progress.mkdir()
    os.environ[PROGRESS_DIR_ENV] = str(progress.resolve())
    live = sys.stdout.isatty() and not verbose
    console.print(f"log: {log}", highlight=False)
    failures: list[StageFailed] = []
    try:
        # the host's imports overlap the rest of Prefect's start
        with stage_host(lambda: text_model_in(root, datasets)), temporary_api(server):
            with (output_shown_and_logged(log) if verbose else output_to_log(log)) as terminal, \
                    StageBoard(stages, terminal, live, progress):
                ran = flow(str(root), datasets, side_by_side=workers > 1 or bool(dask_address))
    except DatasetsFailed as failed:  # the other datasets ran to their end
        ran, failures = failed.ran, failed.failures
    except StageFailed as failure:  # the fingerprints' stage, which every dataset needs
        ran, failures = {}, [failure]
    finally:
        shutil.rmtree(progress, ignore_errors=True)
        logging.getLogger("prefect").setLevel(logging.WARNING)  # its exit lines ("Stopping temporary server")
    end_run_log(log, failures)
    return {stage for stage, did in ran.items() if did}, failures, log
