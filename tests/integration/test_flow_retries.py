"""The flow retries a stage only when it exits EX_TEMPFAIL (75): real DVC, real Prefect."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prefect import flow

from privflow.errors import EXIT_REFUSED, EXIT_TRANSIENT
from privflow.flows.pipeline import run_stage
from privflow.flows.stages import StageFailed, stage_order
from tests.repos import init_repo

pytestmark = pytest.mark.slow

FLAKY = """
import pathlib, sys
attempts = pathlib.Path("attempts.txt")
n = int(attempts.read_text()) if attempts.exists() else 0
attempts.write_text(str(n + 1))
codes = [int(c) for c in sys.argv[1].split(",")]
code = codes[min(n, len(codes) - 1)]
if code == 0:
    pathlib.Path("out.txt").write_text("done")
sys.exit(code)
"""


def dvc_project(root: Path, exit_codes: list[int]) -> Path:
    root.mkdir()
    (root / "flaky.py").write_text(FLAKY)
    codes = ",".join(map(str, exit_codes))
    (root / "dvc.yaml").write_text(
        f"stages:\n  flaky:\n    cmd: {sys.executable} flaky.py {codes}\n    outs: [out.txt]\n"
        f"  after:\n    cmd: cp out.txt after.txt\n    deps: [out.txt]\n    outs: [after.txt]\n")
    init_repo(root)
    return root


@flow
def one_stage(root: str, stage: str) -> bool:
    return run_stage.with_options(retry_delay_seconds=0)(root, stage)


def test_order_comes_from_dvc_yaml(tmp_path):
    assert stage_order(dvc_project(tmp_path / "p", [0])) == ["flaky", "after"]


def test_transient_exit_is_retried(tmp_path, prefect_harness):
    root = dvc_project(tmp_path / "p", [EXIT_TRANSIENT, 0])
    assert one_stage(str(root), "flaky") is True
    assert (root / "attempts.txt").read_text() == "2"
    assert one_stage(str(root), "flaky") is False  # now up to date: DVC skips it
    assert (root / "attempts.txt").read_text() == "2"


def test_refusal_is_not_retried(tmp_path, prefect_harness):
    root = dvc_project(tmp_path / "p", [EXIT_REFUSED, 0])
    with pytest.raises(StageFailed, match=f"exited with {EXIT_REFUSED}"):
        one_stage(str(root), "flaky")
    assert (root / "attempts.txt").read_text() == "1"
