"""The privflow Prefect flow: one task per dvc.yaml stage, in dvc.yaml's order."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from components.artifacts import read_json
from components.report import archive_run
from flows.stages import TransientStageFailure, reproduce_stage, stage_order, stage_outputs

LEDGER_COLUMNS = ("created_at", "run_id", "snapshot_id", "accountant", "noise_multiplier",
                  "sample_rate", "steps", "delta", "epsilon")


def _only_transient(task, task_run, state) -> bool:
    """Retry I/O hiccups; never a validation or privacy refusal (it would fail the same way)."""
    return isinstance(state.result(raise_on_failure=False), TransientStageFailure)


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_only_transient)
def run_stage(root: str, stage: str) -> bool:
    ran = reproduce_stage(Path(root), stage)
    get_run_logger().info("stage %s: %s", stage, "ran" if ran else "up to date, skipped")
    return ran


def reports_dir(root: Path) -> Path:
    """The folder of the report stage's outputs, as dvc.yaml declares them."""
    return stage_outputs(root, "report")[0].parent


@task
def publish_report(root: str) -> str:
    """Archive the run's report, rebuild the run index, attach the report to the flow run."""
    reports = reports_dir(Path(root))
    index = archive_run(reports)
    context = read_json(reports / "report.json")
    create_markdown_artifact(key="privflow-report", markdown=(reports / "report.md").read_text(),
                             description=f"run {context['run_id']}: aggregates only")
    create_table_artifact(key="privflow-budget", description="privacy ledger of this dataset",
                          table=[{k: c[k] for k in LEDGER_COLUMNS} for c in context["budget"]["charges"]])
    return str(index)


@flow(name="privflow-pipeline")
def pipeline(root: str = ".") -> dict[str, bool]:
    """Run every stage of dvc.yaml that is out of date; return which stages ran."""
    ran = {stage: run_stage(root, stage) for stage in stage_order(Path(root))}
    publish_report(root)
    return ran
