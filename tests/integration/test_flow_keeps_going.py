"""A failed stage stops its own dataset and no other: real DVC, real Prefect, one after another
and side by side (the path a Dask cluster takes, here on Prefect's thread pool)."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from privflow.errors import EXIT_REFUSED
from privflow.flows.board import StageBoard
from privflow.flows.pipeline import _one_after_another, _side_by_side
from privflow.flows.stages import DatasetsFailed, StageFailed, stage_order
from tests.repos import init_repo

pytestmark = pytest.mark.slow

STEP = f"""
import pathlib, sys
dataset, step = sys.argv[1:]
if dataset in pathlib.Path("refused.txt").read_text().split() and step == "make":
    print("privflow: dataset b refused: its budget is spent")
    sys.exit({EXIT_REFUSED})
out = pathlib.Path("out", dataset, step + ".txt")
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(step)
"""


def three_datasets(root: Path, refused: str = "b") -> Path:
    """Stages `make` then `after` for datasets a, b, c; the `make` of those in refused.txt refuses."""
    root.mkdir()
    (root / "step.py").write_text(STEP)
    (root / "refused.txt").write_text(refused)
    python = sys.executable
    (root / "dvc.yaml").write_text(
        "stages:\n"
        f"  make:\n    foreach: [a, b, c]\n    do:\n      cmd: {python} step.py ${{item}} make\n"
        "      deps: [step.py, refused.txt]\n      outs: ['out/${item}/make.txt']\n"
        f"  after:\n    foreach: [a, b, c]\n    do:\n      cmd: {python} step.py ${{item}} after\n"
        "      deps: ['out/${item}/make.txt']\n      outs: ['out/${item}/after.txt']\n")
    init_repo(root)
    return root


@flow
def one_after_another(root: str) -> tuple[dict[str, bool], list[StageFailed]]:
    return _one_after_another(root, stage_order(Path(root)))


@flow(task_runner=ThreadPoolTaskRunner(max_workers=1))  # one DVC at a time in this process
def side_by_side(root: str) -> tuple[dict[str, bool], list[StageFailed]]:
    return _side_by_side(root, stage_order(Path(root)), ["a", "b", "c"])


@pytest.mark.parametrize("run", [one_after_another, side_by_side], ids=["one after another", "side by side"])
def test_a_failed_stage_stops_its_dataset_only(tmp_path, prefect_harness, run, monkeypatch):
    root = three_datasets(tmp_path / "p")
    monkeypatch.chdir(root)  # as privflow runs: DVC's run cache misplaces a stage run from outside its repository
    shown = io.StringIO()
    with StageBoard(stage_order(root), shown, live=False):
        ran, failures = run(str(root))
    assert ran == {"make@a": True, "after@a": True, "make@c": True, "after@c": True}
    assert [failure.stage for failure in failures] == ["make@b"]
    assert f"exited with {EXIT_REFUSED}" in str(failures[0])
    assert sorted((root / "out").rglob("*.txt")) == [root / "out" / d / f"{s}.txt" for d in "ac"
                                                     for s in ("after", "make")]
    lines = shown.getvalue().splitlines()
    assert "after@b: not run" in lines and any(line.startswith("make@b: failed") for line in lines), lines
    assert sum(line.startswith(("make@a: ran", "after@a: ran", "make@c: ran", "after@c: ran")) for line in lines) == 4


def test_what_failed_crosses_to_a_dask_worker_and_back():
    failed = DatasetsFailed([StageFailed("stage 'train@b' failed: refused", "train@b")], {"ingest@b": True})
    back = pickle.loads(pickle.dumps(failed))
    assert (back.stage, back.ran, [str(f) for f in back.failures]) == ("train@b", {"ingest@b": True},
                                                                        ["stage 'train@b' failed: refused"])


def test_a_failed_stage_gets_back_the_outputs_dvc_lock_records(tmp_path, prefect_harness, monkeypatch):
    """DVC deletes a stage's outputs as it starts it; failing, the stage's last good outputs come
    back (a refused train keeps serving the last good model)."""
    root = three_datasets(tmp_path / "p", refused="")
    monkeypatch.chdir(root)
    assert one_after_another(str(root)) == ({stage: True for stage in stage_order(root)}, [])
    (root / "refused.txt").write_text("b")
    ran, failures = one_after_another(str(root))
    assert [failure.stage for failure in failures] == ["make@b"] and "make@b" not in ran
    assert (root / "out" / "b" / "make.txt").read_text() == "make"  # deleted by DVC, then put back
