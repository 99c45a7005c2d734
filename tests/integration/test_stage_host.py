"""The stage host (privflow.stagehost): a stage command handed to it says and exits exactly as
it would alone, and the host serves nothing but stage commands of the same interpreter."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from privflow.stagehost import HOST_ENV, THREAD_VARIABLES, address, same_interpreter, share_cores
from privflow.stageserver import stage_host, wait_until_serving


@pytest.fixture(scope="module")
def host():
    with stage_host():
        name = os.environ[HOST_ENV]
        assert wait_until_serving(name), "the host never started serving"
        yield name


def _stage(tmp_path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args", [
    ("privflow.stages.ingest", "--help"),  # exit 0, usage on stdout
    ("privflow.stages.ingest", "--dataset", "nosuch", "--out", "out"),  # a refusal: exit 2, one line on stderr
    ("privflow.stages.train", "--dataset", "x"),  # argparse: exit 2, usage on stderr
])
def test_a_stage_through_the_host_says_and_exits_as_it_would_alone(host, tmp_path, args):
    alone_env = {k: v for k, v in os.environ.items() if k != HOST_ENV}
    alone = _stage(tmp_path, alone_env, *args)
    hosted = _stage(tmp_path, {**alone_env, HOST_ENV: host}, *args)
    assert (hosted.returncode, hosted.stdout, hosted.stderr) == (alone.returncode, alone.stdout, alone.stderr)
    assert alone.stdout or alone.stderr


def test_a_stage_the_host_refuses_runs_alone_and_says_why(host, tmp_path):
    """A refused stage still runs, in its own process, at the cost of its imports: said on its
    stderr (the run's log), where a run twice as slow as it should be is looked into. Seen in a
    deployment's test: Prefect's worker gave the flow a PYTHONPATH of its own."""
    args = ("privflow.stages.ingest", "--help")
    alone_env = {k: v for k, v in os.environ.items() if k != HOST_ENV}
    other_path = {**alone_env, "PYTHONPATH": str(tmp_path)}
    alone, refused = _stage(tmp_path, other_path, *args), _stage(tmp_path, {**other_path, HOST_ENV: host}, *args)
    assert (refused.returncode, refused.stdout) == (alone.returncode, alone.stdout) and alone.stdout
    assert refused.stderr == alone.stderr + ("privflow: the stage host refused this stage (another interpreter); it "
                                             "runs in a process of its own, importing its libraries itself\n")


def _ask(host: str, **overrides) -> str:
    request = {"module": "privflow.stages.ingest", "args": ["--help"], "cwd": os.getcwd(), "env": dict(os.environ),
               **same_interpreter(), **overrides}
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as connection:
        connection.connect(address(host))
        with open(os.devnull, "w") as sink:
            socket.send_fds(connection, [json.dumps(request).encode()], [sink.fileno()] * 3)
            return connection.recv(64).decode()


@pytest.mark.parametrize("overrides, refusal", [
    ({"module": "os"}, "no not a stage"),
    ({"prefix": "/elsewhere"}, "no another interpreter"),
    ({"executable": "/usr/bin/false"}, "no another interpreter"),
    ({"pythonpath": "/elsewhere"}, "no another interpreter"),  # the host's imports would not be the command's
])
def test_the_host_runs_only_stage_modules_of_its_own_interpreter(host, overrides, refusal):
    assert _ask(host, **overrides) == refusal
    assert _ask(host).startswith("ok ")


def test_turned_off_no_host_starts_and_each_stage_runs_in_its_own_process(tmp_path, monkeypatch):
    import psutil

    def hosts() -> set[int]:
        return {p.pid for p in psutil.Process().children() if "privflow.stageserver" in p.cmdline()}

    before = hosts()
    monkeypatch.setenv(HOST_ENV, "none")
    with stage_host():
        assert os.environ[HOST_ENV] == "none" and hosts() == before
        done = _stage(tmp_path, dict(os.environ), "privflow.stages.ingest", "--help")
    assert done.returncode == 0 and "usage" in done.stdout


def test_the_host_ends_with_the_run_that_started_it_even_when_that_run_is_sigkilled():
    import signal
    import time

    import psutil

    script = ("import os, sys, time\n"
              "from privflow.stageserver import stage_host\n"
              "with stage_host():\n"
              "    print(os.environ['PRIVFLOW_STAGE_HOST'], flush=True)\n"
              "    time.sleep(600)\n")
    run = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                           env={k: v for k, v in os.environ.items() if k != HOST_ENV})
    assert wait_until_serving(run.stdout.readline().strip())
    (host,) = psutil.Process(run.pid).children()
    run.send_signal(signal.SIGKILL)
    run.wait()
    deadline = time.monotonic() + 10
    while host.is_running() and host.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not host.is_running() or host.status() == psutil.STATUS_ZOMBIE


def test_cores_are_shared_only_between_processes_and_never_over_the_users_setting():
    cores = len(os.sched_getaffinity(0))
    environ = {}
    share_cores(2, environ)
    assert environ == {name: str(max(1, cores // 2)) for name in THREAD_VARIABLES}
    alone = {}
    share_cores(1, alone)
    assert alone == {}  # one process keeps the libraries' defaults
    chosen = {"OMP_NUM_THREADS": "3"}
    share_cores(2, chosen)
    assert chosen["OMP_NUM_THREADS"] == "3"


def test_a_hosted_stage_takes_its_thread_count_from_its_own_environment():
    """OpenMP reads OMP_NUM_THREADS once, as the host loads torch: a stage forked from it must
    set torch's count from the command's environment, as a fresh process would have."""
    probe = ("import os, torch; torch.set_num_threads(2); os.environ['OMP_NUM_THREADS'] = '1'; "
             "from privflow.stageserver import _fresh_process_state; _fresh_process_state(); "
             "print(torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "1", result.stderr


@pytest.mark.parametrize("text", [False, True])
def test_the_host_loads_the_text_models_libraries_only_for_a_run_that_trains_one(text):
    """The tokenizers' native library is mapped into the host only when asked for (2 s of imports here)."""
    from privflow.stageserver import start_host, stop_host

    name, host = start_host(text)
    try:
        assert wait_until_serving(name), "the host never started serving"
        mapped = open(f"/proc/{host.pid}/maps").read()
        assert ("site-packages/tokenizers/" in mapped) == text
        assert "site-packages/torch/" in mapped  # what every run's stages use
    finally:
        stop_host(host)


def test_a_run_needs_the_text_models_libraries_when_one_of_its_datasets_trains_it(tmp_path):
    from privflow.flows.pipeline import text_model_in
    from tests.conftest import ROOT

    assert not text_model_in(ROOT, ["breast_cancer", "churn"])
    assert text_model_in(ROOT, ["breast_cancer", "feedback"]) and text_model_in(ROOT, None)
    (tmp_path / "params.yaml").write_text("datasets: {x: {source: a.csv, schema: nosuch.yaml}}\ntrain: {epochs: -1}\n")
    assert text_model_in(tmp_path, None)  # unsure: loaded (train's own check says what is wrong)


def test_whether_a_run_needs_the_text_libraries_is_asked_only_when_a_host_starts(monkeypatch):
    """The flow of `privflow run` finds the run's host already named: it reads no settings for one."""
    monkeypatch.setenv(HOST_ENV, "the-runs-own-host")
    with stage_host(lambda: pytest.fail("asked, though no host starts")):
        assert os.environ[HOST_ENV] == "the-runs-own-host"
