"""The privflow Prefect flow: one task per dvc.yaml stage, in dvc.yaml's order."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.stages import TransientStageFailure, reproduce_stage, stage_order

REPORT = Path("reports/report.html")


def _only_transient(task, task_run, state) -> bool:
    """Retry I/O hiccups; never a validation or privacy refusal (it would fail the same way)."""
    return isinstance(state.result(raise_on_failure=False), TransientStageFailure)


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_only_transient)
def run_stage(root: str, stage: str) -> bool:
    ran = reproduce_stage(Path(root), stage)
    get_run_logger().info("stage %s: %s", stage, "ran" if ran else "up to date, skipped")
    return ran


def summary_markdown(root: Path) -> str:
    training = json.loads((root / "metrics/train.json").read_text())
    validation = json.loads((root / "metrics/validate.json").read_text())
    p, b = training["privacy"], training["budget"]
    return "\n".join([
        "# privflow run", "",
        "| | |", "|---|---|",
        f"| snapshot | `{training['snapshot_id']}` |",
        f"| rows in / valid / quarantined / unparseable | {validation['rows_in']} / "
        f"{validation['rows_valid']} / {validation['rows_quarantined']} / {validation['lines_unparseable']} |",
        f"| epsilon (delta) this run | {p['epsilon_spent']:.3f} ({p['delta']:g}), {p['accountant']} |",
        f"| budget spent / cap | {b['spent_total']:.3f} / {b['cap']:g} |",
        f"| test accuracy DP / non-private | {training['accuracy']['private']:.3f} / "
        f"{training['accuracy']['non_private_baseline']:.3f} |",
    ])


@flow(name="privflow-pipeline")
def pipeline(root: str = ".") -> dict[str, bool]:
    """Run every stage of dvc.yaml that is out of date; return which stages ran."""
    ran = {stage: run_stage(root, stage) for stage in stage_order(Path(root))}
    create_markdown_artifact(key="privflow-run", markdown=summary_markdown(Path(root)),
                             description="privacy and data summary (aggregates only)")
    return ran
