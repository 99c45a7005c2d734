"""A stage run through the stage host (privflow.stagehost) really runs there, and dies with
the command DVC started: a SIGKILL of the command leaves no stage working behind it."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time

import psutil
import pytest

from privflow.stagehost import HOST_ENV
from privflow.stageserver import stage_host, wait_until_serving
from tests.workspace import demo_workspace

pytestmark = pytest.mark.slow


def _host_children() -> list[psutil.Process]:
    """The children of this test's own host (other tests of this process share another one)."""
    (host,) = [p for p in psutil.Process().children() if os.environ[HOST_ENV] in p.cmdline()]
    return host.children()


def _until(condition, seconds: float = 120) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


@pytest.mark.parametrize("end", ["sigkill of the command", "sigterm of the stage"])
def test_a_hosted_training_runs_in_the_host_and_ends_with_its_command(tmp_path, end):
    workspace = demo_workspace(tmp_path, hosted=False)  # the one host here is the test's own
    workspace.run("dvc", "repro", "encrypt", "pretrain", check=True)
    workspace.edit_params(train={"epochs": 2000})  # minutes of training: it is ended long before
    ledger = workspace.open_ledger()
    with stage_host():
        assert wait_until_serving(os.environ[HOST_ENV])
        command = subprocess.Popen(shlex.split(workspace.stage_command("train")), cwd=workspace.repo,
                                   env={**workspace.env, HOST_ENV: os.environ[HOST_ENV]},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert _until(lambda: ledger.charges() or command.poll() is not None), "never charged"
        (stage,) = _host_children()  # the work is the host's child; the command only waits
        assert psutil.Process(command.pid).children() == []
        assert stage.cwd() == str(workspace.repo)
        time.sleep(1)  # into training
        if end == "sigkill of the command":
            command.send_signal(signal.SIGKILL)
            assert command.wait() == -signal.SIGKILL
        else:  # the stage dies of a signal: its command dies of the same one, as DVC would see alone
            stage.send_signal(signal.SIGTERM)
            assert command.wait(timeout=30) == -signal.SIGTERM
        assert _until(lambda: not stage.is_running() or stage.status() == psutil.STATUS_ZOMBIE, 5)
        assert _until(lambda: _host_children() == [], 5)
    assert len(ledger.charges()) == 1  # charged once, for the whole plan, before the first step
    assert not workspace.artifacts("train").exists()  # nothing half-written
