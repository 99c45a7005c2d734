"""DPDDP across two "nodes" on the loopback address, through torchrun's c10d rendezvous: the
train stage on one checkout, `privflow join` on a second checkout of the same project (its
sealed splits copied as `dvc pull` would bring them). The accountant sees the global batch:
the same (sigma, q, steps) and epsilon as one process. A node whose settings differ makes
every process refuse, before any reads a row, and the train stage names it. A run killed on
the train stage's node leaves no training behind, and resumes on both nodes from the
checkpoint on that node's disk, under its one charge."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.workspace import demo_workspace

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def two_nodes(tmp_path):
    workspace = demo_workspace(tmp_path)
    workspace.edit_params(train={"nodes": 2, "processes": 1, "rendezvous": f"127.0.0.1:{_free_port()}"})
    workspace.run("dvc", "repro", "encrypt@breast_cancer", "pretrain@breast_cancer", check=True)
    other = tmp_path / "node2"
    shutil.copytree(workspace.repo, other, symlinks=True)  # the project, its sealed splits and public weights
    return workspace, other


def _join(workspace, other) -> subprocess.Popen:
    return subprocess.Popen(["privflow", "join", "-d", "breast_cancer"], cwd=other, env=workspace.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_nodes_on_loopback_train_one_run_with_the_epsilon_of_one_process(two_nodes):
    workspace, other = two_nodes
    joined = _join(workspace, other)
    stage = workspace.run("dvc", "repro", "train@breast_cancer")
    node2 = joined.communicate(timeout=600)[0]
    assert stage.returncode == 0, stage.stdout + stage.stderr + node2
    assert joined.returncode == 0 and "joined" in node2, node2
    metrics = json.loads(workspace.metrics("train").read_text())
    assert metrics["training"]["nodes"] == 2 and metrics["training"]["processes"] == 1
    (charge,) = workspace.open_ledger().charges()  # one charge, on the train stage's node
    privacy = metrics["privacy"]
    assert privacy["accountant_history"] == [[charge.noise_multiplier, charge.sample_rate, charge.steps]]
    assert privacy["epsilon_spent"] == pytest.approx(charge.epsilon, rel=1e-9) and charge.epsilon <= 3.0 + 1e-9
    assert metrics["accuracy"]["private"] > 0.85
    assert not (other / "metrics" / "breast_cancer" / "train.json").exists()  # the joining node writes nothing


def test_a_node_with_other_settings_makes_every_process_refuse_and_is_named(two_nodes):
    workspace, other = two_nodes
    params = yaml.safe_load((other / "params.yaml").read_text())
    params["train"]["learning_rate"] = 0.01
    (other / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    joined = _join(workspace, other)
    stage = workspace.run("dvc", "repro", "train@breast_cancer")
    node2 = joined.communicate(timeout=600)[0]
    assert stage.returncode != 0 and joined.returncode != 0
    printed = stage.stdout + stage.stderr
    assert "DPDDP refused" in printed and f"({other})" in printed and "use the same params.yaml" in printed, printed
    assert "DPDDP refused" in node2
    assert "charge stands" in printed  # the run was charged before it started: said, never hidden


def _training_processes(folder: Path) -> list[int]:
    """The DPDDP processes (torchrun and its workers) running in `folder`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            running = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            if b"privflow.training.distributed" in running and os.readlink(proc / "cwd") == str(folder):
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


def test_a_killed_two_node_run_leaves_nothing_behind_and_resumes_on_both_under_its_one_charge(two_nodes):
    workspace, other = two_nodes
    longer = {"epochs": 60, "checkpoint_every_epochs": 20}
    workspace.edit_params(train=longer)
    params = yaml.safe_load((other / "params.yaml").read_text())
    params["train"].update(longer)
    (other / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    joined = _join(workspace, other)
    workspace.kill_train_at_first_checkpoint()
    node2 = joined.communicate(timeout=300)[0]
    assert joined.returncode != 0, node2  # its run broke with the other node's
    deadline = time.monotonic() + 60
    while _training_processes(workspace.repo) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _training_processes(workspace.repo) == []  # torchrun ended with the stage: nothing races the re-run
    (charge,) = workspace.open_ledger().charges()
    rejoined = _join(workspace, other)
    rerun = workspace.run("dvc", "repro", "train@breast_cancer")
    node2 = rejoined.communicate(timeout=600)[0]
    assert rerun.returncode == 0 and rejoined.returncode == 0, rerun.stdout + rerun.stderr + node2
    metrics = json.loads(workspace.metrics("train").read_text())
    assert metrics["run_id"] == charge.run_id and len(workspace.open_ledger().charges()) == 1  # resumed, not charged
    every = 20 * round(1 / charge.sample_rate)  # steps between checkpoints
    resumed = metrics["training"]["resumed_from_step"]
    assert metrics["training"]["nodes"] == 2 and resumed >= every and resumed % every == 0, resumed
    assert metrics["privacy"]["accountant_history"] == [[charge.noise_multiplier, charge.sample_rate, charge.steps]]
    assert metrics["privacy"]["epsilon_spent"] == pytest.approx(charge.epsilon, rel=1e-9)
    assert not workspace.checkpoint().exists() and not (other / ".privflow" / "checkpoints").exists()
