"""Crash safety: SIGKILL a stage at random points, re-run, and nothing is lost or left behind.

For each stage whose outputs are deterministic (ingest, validate, encrypt, explain) the run is
killed at random moments (the whole process group: DVC and the stage command), then `dvc
repro` completes the pipeline. The final hashes must equal those of the uninterrupted run,
no partial file or plaintext may remain, and the ledger must hold exactly the charges made.
The later stages (pretrain, train, compress, report) are killed the same way with a noise
seed set (development only), which makes training reproducible on CPU: the files that do not
carry timings or run ids (pretrained weights, model weights, the int8 export) must come back
byte-equal, whether the killed training resumed from its checkpoint or started again.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

import pytest
import yaml

from privflow.demo_data import demo_table
from tests.workspace import demo_workspace, files_containing

pytestmark = pytest.mark.slow

DETERMINISTIC = ("ingest", "validate", "encrypt", "explain")
KILLS_PER_STAGE = 3


def tracked_hashes(workspace) -> dict[str, str]:
    lock = yaml.safe_load((workspace.repo / "dvc.lock").read_text())["stages"]
    return {f"{name}:{out['path']}": out["md5"] for name, stage in lock.items()
            if name.split("@")[0] in DETERMINISTIC for out in stage.get("outs", [])}


def _stage_command(process: subprocess.Popen, stage: str):
    """The stage's own command among the children of `dvc repro`, if it runs now."""
    import psutil

    try:
        return next((p for p in psutil.Process(process.pid).children(recursive=True)
                     if f"privflow.stages.{stage}" in " ".join(p.cmdline())), None)
    except psutil.Error:
        return None


def kill_at_random(workspace, stage: str, rng: random.Random, longest: float = 4.0,
                   after=None, in_command: bool = False) -> tuple[float, bool]:
    """Force-run one stage and SIGKILL its process group after a random delay: (delay, whether
    it was still running when killed). `after`: a condition the delay counts from (the run's
    charge in the ledger, a checkpoint on disk), so the kill lands in training, not imports.
    `in_command`: the delay counts from the stage command's start, and the kill lands only
    while that command runs: in its work, not in DVC's bookkeeping around it (which the first
    test's kills reach, the lock's rewrite included)."""
    delay = rng.uniform(0.3, longest)
    process = subprocess.Popen(["dvc", "repro", "--force", "--single-item", f"{stage}@breast_cancer"],
                               cwd=workspace.repo, env=workspace.env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    if in_command:
        after = lambda: _stage_command(process, stage) is not None  # noqa: E731
    while after is not None and not after() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    running = process.poll() is None and (not in_command or _stage_command(process, stage) is not None)
    if running:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return delay, running


def rerun(workspace, cut: list) -> subprocess.CompletedProcess:
    """`dvc repro` after a kill. A kill while DVC rewrote dvc.lock or its path-lock file (both
    in place, so no stage can prevent it) cuts that file; `privflow repair` must mend it. The
    kills hit stages in their own processes; the re-run's stages run in a stage host, as under
    `privflow run` (the first full run of each test is the plain path, every stage alone)."""
    from privflow.lockfile import looks_complete

    lock = looks_complete((workspace.repo / "dvc.lock").read_text())
    rwlock = workspace.repo / ".dvc" / "tmp" / "rwlock"
    try:
        json.loads(rwlock.read_text()) if rwlock.exists() else None
        path_locks = True
    except ValueError:
        path_locks = False
    if not (lock and path_locks):
        mended = workspace.run("privflow", "repair")
        said = " ".join((mended.stdout + mended.stderr).split())
        assert mended.returncode == 0 and "cut short" in said, mended
        cut.append("dvc.lock" if not lock else "rwlock")
    return workspace.run("dvc", "repro", hosted=True)


def test_sigkill_at_random_points_then_rerun_gives_the_uninterrupted_result(tmp_path):
    _, rows = demo_table()  # the ids searched for as plaintext below
    workspace = demo_workspace(tmp_path, hosted=False)  # plain `dvc repro`: each stage its own process
    workspace.run("dvc", "repro", check=True)
    reference = tracked_hashes(workspace)
    charges = len(workspace.open_ledger().charges())
    rng = random.Random(20261124)
    tried, cut = [], []
    for stage in DETERMINISTIC:
        for _ in range(KILLS_PER_STAGE):
            delay, killed = kill_at_random(workspace, stage, rng)
            tried.append((stage, round(delay, 2), killed))
            result = rerun(workspace, cut)
            assert result.returncode == 0, (tried[-1], result.stdout, result.stderr)
            assert tracked_hashes(workspace) == reference, tried[-1]
    assert sum(killed for *_, killed in tried) >= len(tried) // 2  # most kills hit a running stage
    leftovers = [p for p in (workspace.repo / "artifacts").rglob("*") if p.name.endswith(".partial")]
    assert leftovers == []
    # no plaintext anywhere but the source: temp dir, artifacts, DVC cache
    secrets = [rows[0][0].encode(), rows[5][0].encode()]  # patient ids of valid rows
    roots = [workspace.base / "tmp", workspace.repo / "artifacts", workspace.repo / ".dvc"]
    assert files_containing(roots, secrets) == {}
    ledger = workspace.open_ledger()
    assert len(ledger.charges()) == charges and ledger.verify() == []  # killed stages charge nothing
    (tmp_path / "logs" / "kill-points.txt").write_text("\n".join(f"{s} {d} {k}" for s, d, k in tried)
                                                        + f"\ncut locks mended: {len(cut)}\n")


LATER = ("pretrain", "train", "compress", "report")
STABLE_FILES = ("artifacts/breast_cancer/pretrain/pretrain.json", "artifacts/breast_cancer/train/model.safetensors",
                "artifacts/breast_cancer/compress/model.int8.onnx.gz")


def stable_digests(workspace) -> dict[str, str]:
    import hashlib

    return {name: hashlib.sha256((workspace.repo / name).read_bytes()).hexdigest() for name in STABLE_FILES}


def test_sigkill_in_the_later_stages_then_rerun_gives_the_same_model(tmp_path):
    _, rows = demo_table()  # the ids searched for as plaintext below
    workspace = demo_workspace(tmp_path, hosted=False)  # plain `dvc repro`: each stage its own process
    # several seconds of training after the charge, a checkpoint every few epochs: the first
    # training kill lands just after a checkpoint (resumed under the same charge), the others
    # at random after the charge (before the first checkpoint: a new run and a new charge)
    workspace.edit_params(train={"noise_seed": 99, "epochs": 60, "checkpoint_every_epochs": 5})
    checkpoint = workspace.checkpoint()
    workspace.run("dvc", "repro", check=True)
    reference = stable_digests(workspace)
    ledger = workspace.open_ledger()
    rng = random.Random(20261125)
    tried, resumed = [], []
    for stage in LATER:
        for attempt in range(KILLS_PER_STAGE):
            charged = len(ledger.charges())
            if stage != "train":  # from the command's start: its imports (torch, ~2 s), then its work
                after, longest = None, 5.0
            elif attempt == 0:  # just after a checkpoint: must resume under the same charge
                after, longest = checkpoint.exists, 0.3
            else:  # anywhere in training
                after, longest = (lambda: len(ledger.charges()) > charged), 4.0
            delay, killed = kill_at_random(workspace, stage, rng, longest, after, in_command=stage != "train")
            tried.append((stage, round(delay, 2), killed))
            result = rerun(workspace, [])
            assert result.returncode == 0, (tried[-1], result.stdout, result.stderr)
            assert stable_digests(workspace) == reference, tried[-1]
            assert (workspace.reports() / "report.html").exists()
            if stage == "train":
                resumed.append(json.loads(workspace.metrics("train").read_text())["training"]["resumed_from_step"])
    assert sum(killed for *_, killed in tried) >= len(tried) // 2
    assert any(resumed), f"no killed training resumed from a checkpoint: {tried}"
    assert [p for p in workspace.repo.rglob("*.partial")] == []
    # A killed run's checkpoint may remain: when the re-run finds the stage in DVC's run cache
    # it restores the outputs without running training. It is sealed (searched below) and its
    # run is charged, so a later run of this configuration resumes it under that charge.
    # every training run charged once, ahead; a resumed run under its first charge, never twice
    charges = ledger.charges()
    final = json.loads(workspace.metrics("train").read_text())["run_id"]
    assert ledger.verify() == [] and final in {c.run_id for c in charges}
    assert len({c.run_id for c in charges}) == len(charges) <= 1 + KILLS_PER_STAGE
    secrets = [rows[0][0].encode(), rows[5][0].encode()]
    roots = [workspace.base / "tmp", workspace.repo / "artifacts", workspace.repo / ".dvc", workspace.repo / ".privflow"]
    assert files_containing(roots, secrets) == {}
    (tmp_path / "logs" / "kill-points-later.txt").write_text("\n".join(f"{s} {d} {k}" for s, d, k in tried))
