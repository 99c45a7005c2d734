"""The privflow Prefect flow: one task per dvc.yaml stage, in dvc.yaml's order."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from privflow.artifacts import read_json
from privflow.catalog import REPORT_FILES
from privflow.errors import PrivflowError
from privflow.flows.board import FAILED, NOT_RUN, RAN, RUNNING, UP_TO_DATE, announce, say
from privflow.flows.run_output import service_console
from privflow.flows.stages import (
    DatasetsFailed,
    StageFailed,
    TransientStageFailure,
    dataset_of,
    reports_dir,
    reproduce_stage,
    stage_order,
)
from privflow.project import refresh_dvc_yaml, refreshed_note
from privflow.reporting.archive import archive_run
from privflow.stageserver import stage_host

LEDGER_COLUMNS = ("created_at", "run_id", "snapshot_id", "accountant", "noise_multiplier",
                  "sample_rate", "steps", "delta", "epsilon")


def _only_transient(task, task_run, state) -> bool:
    """Retry I/O hiccups; never a validation or privacy refusal (it would fail the same way)."""
    return isinstance(state.result(raise_on_failure=False), TransientStageFailure)


def _reproduce_announced(root: str, stage: str) -> bool:
    announce(stage, RUNNING)
    try:
        ran = reproduce_stage(Path(root), stage)
    except StageFailed:
        announce(stage, FAILED)
        raise
    announce(stage, RAN if ran else UP_TO_DATE)
    get_run_logger().info("stage %s: %s", stage, "ran" if ran else "up to date, skipped")
    return ran


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_only_transient)
def run_stage(root: str, stage: str) -> bool:
    return _reproduce_announced(root, stage)


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_only_transient)
def run_dataset_stages(root: str, stages: list[str]) -> tuple[str, dict[str, bool]]:
    """One dataset's stages in order, as one task: with a Dask task runner, datasets run side
    by side on the cluster's workers. DVC releases its repository lock while a stage's
    command runs and guards each path with its own read/write lock, so stages of different
    datasets (disjoint outputs) run at once; each waits its turn only to check and record."""
    ran = {}
    for stage in stages:
        try:
            ran[stage] = _reproduce_announced(root, stage)
        except TransientStageFailure:
            raise  # this task is retried: the stages that ran are up to date the next time
        except StageFailed as failure:  # the flow shows which of this dataset's stages ran before it
            raise DatasetsFailed([failure], ran) from None
    return f"{socket.gethostname()}:{os.getpid()}", ran


def ensure_public_folder(root: Path, dataset: str) -> None:
    """`pretrain` depends on the dataset's public folder; a new dataset gets an explained empty one."""
    folder = root / "data" / "public" / dataset
    if not folder.exists():
        folder.mkdir(parents=True)
        (folder / "README.md").write_text(
            f"Public data for `{dataset}` goes here (same columns as the private source), declared by a "
            "`pretrain:` entry in params.yaml. Never private data: the pretrain stage refuses it.\n")


@task
def publish_report(root: str, dataset: str) -> str:
    """Archive the run's report, rebuild the run index, attach the report to the flow run."""
    reports = reports_dir(Path(root), dataset)
    index = archive_run(reports)
    _, report_md, document = REPORT_FILES
    context = read_json(reports / document)
    key = dataset.lower().replace("_", "-").replace(".", "-")  # Prefect keys: a-z, 0-9, dashes
    create_markdown_artifact(key=f"privflow-report-{key}", markdown=(reports / report_md).read_text(),
                             description=f"{dataset}, run {context['run_id']}: aggregates only")
    create_table_artifact(key=f"privflow-budget-{key}", description=f"privacy ledger of {dataset}",
                          table=[{k: c[k] for k in LEDGER_COLUMNS} for c in context["budget"]["charges"]])
    return str(index)


@contextmanager
def project_lock(root: Path, wait_seconds: float) -> Iterator[None]:
    """One pipeline run at a time per project: a second run (a schedule firing during an
    on-demand run) waits, then finds the stages the first one ran up to date, so it can never
    train (and spend budget) on the same data twice. Runs in other clones are kept apart by
    the ledger's own transaction."""
    path = root / ".privflow" / "pipeline.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + wait_seconds
        logged = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PrivflowError(f"{root.resolve()}: another privflow run still holds {path} after "
                                        f"{wait_seconds:.0f} s; see `privflow status`") from None
                if not logged:
                    get_run_logger().info("another privflow run is in progress here; waiting for it")
                    say("another privflow run is in progress here; waiting for it")
                    logged = True
                time.sleep(1)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield


@flow(name="privflow-pipeline")
def pipeline(root: str = ".", datasets: list[str] | None = None, wait_seconds: float = 3600,
             side_by_side: bool = False) -> dict[str, bool]:
    """Run every stage of dvc.yaml that is out of date (of the named datasets, or all);
    return which stages ran. `side_by_side`: one task per dataset, submitted to the flow's
    task runner (a Dask cluster: `privflow run --workers 2` or `--dask-address`)."""
    # a host for serve's runs; `privflow run` started one already
    with service_console(Path(root), datasets) as service, project_lock(Path(root), wait_seconds), \
            stage_host(lambda: text_model_in(Path(root), datasets)):
        # a scheduled or deployed run after an upgrade: dvc.yaml (and dvc.lock) as this privflow writes them
        if refreshed := refresh_dvc_yaml(Path(root)):
            get_run_logger().info(refreshed_note(refreshed))
            say(refreshed_note(refreshed))
        ran = _run_stages(root, datasets, side_by_side)
        if service:  # a failure is said as the service's console closes
            service.finished(datasets, ran, [])
        return ran


def text_model_in(root: Path, datasets: list[str] | None) -> bool:
    """Whether one of the datasets (all, if None) trains the text model: only then does the
    stage host import its libraries (transformers, tokenizers). When unsure, it does."""
    from privflow.settings import dataset_names, load_settings

    params = root / "params.yaml"
    try:
        return any(load_settings(name, params).train.model == "text" for name in datasets or dataset_names(params))
    except PrivflowError:  # the stage that reads these settings says what is wrong with them
        return True


def _run_stages(root: str, datasets: list[str] | None, side_by_side: bool = False) -> dict[str, bool]:
    """Every stage in order, the fingerprints first. A failed stage stops its own dataset's later
    stages and no other dataset's (they share no artifact but the fingerprints): a scheduled run
    of three datasets, one of which cannot be read or has spent its budget, still brings the
    other two up to date and publishes their reports; then the flow fails, naming that one."""
    order = stage_order(Path(root))
    shared = [s for s in order if not dataset_of(s)]  # the fingerprints: every dataset's, taken first
    stages = [s for s in order if dataset_of(s) and (datasets is None or dataset_of(s) in datasets)]
    names = list(dict.fromkeys(dataset_of(s) for s in stages))
    if datasets is not None and (unknown := set(datasets) - set(names)):
        raise PrivflowError(f"no stages for dataset(s) {sorted(unknown)}: declare them under `datasets:` "
                            "in params.yaml")
    for dataset in names:
        ensure_public_folder(Path(root), dataset)
    ran = {stage: run_stage(root, stage) for stage in shared}  # failing, it stops every dataset
    done, failures = _side_by_side(root, stages, names) if side_by_side else _one_after_another(root, stages)
    ran.update(done)
    failed = {dataset_of(failure.stage) for failure in failures}
    for dataset in names:
        if dataset not in failed:
            publish_report(root, dataset)
    if failures:
        raise DatasetsFailed(failures, ran)
    return ran


def _one_after_another(root: str, stages: list[str]) -> tuple[dict[str, bool], list[StageFailed]]:
    ran: dict[str, bool] = {}
    failures: list[StageFailed] = []
    for stage in stages:
        if dataset_of(stage) in {dataset_of(failure.stage) for failure in failures}:
            announce(stage, NOT_RUN)
            continue
        try:
            ran[stage] = run_stage(root, stage)
        except StageFailed as failure:
            failures.append(failure)
    return ran, failures


def _side_by_side(root: str, stages: list[str], names: list[str]) -> tuple[dict[str, bool], list[StageFailed]]:
    """One task per dataset on the flow's task runner (the stages' announcements stay in the
    worker's process, so they are made again here)."""
    chains = {name: [s for s in stages if dataset_of(s) == name] for name in names}
    futures = {name: run_dataset_stages.submit(root, chain) for name, chain in chains.items()}
    ran: dict[str, bool] = {}
    failures: list[StageFailed] = []
    for name, future in futures.items():
        worker, stopped_at = None, None
        try:
            worker, done = future.result()
        except DatasetsFailed as failed:
            failures += failed.failures
            done, stopped_at = failed.ran, failed.stage
        except StageFailed as failure:  # a transient failure, retried until the task gave up
            failures.append(failure)
            done, stopped_at = {}, failure.stage
        _announce_chain(chains[name], done, stopped_at)
        if worker is not None:
            said = f"dataset {name}: stages ran in worker {worker}"
            get_run_logger().info(said)
            say(said)
        ran.update(done)
    return ran, failures


def _announce_chain(chain: list[str], done: dict[str, bool], stopped_at: str | None) -> None:
    for stage in chain:
        if stage in done:
            announce(stage, RAN if done[stage] else UP_TO_DATE)
        elif stage == stopped_at:
            announce(stage, FAILED)
        elif stopped_at is not None and chain.index(stage) > chain.index(stopped_at):
            announce(stage, NOT_RUN)
