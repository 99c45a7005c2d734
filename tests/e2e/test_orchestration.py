"""Schedules, deployments and concurrency, for real: `privflow serve` on a local Prefect server,
infra/prefect.yaml's deployments run by a Prefect worker, and simultaneous runs that must not
both spend one budget."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request

import pytest

from privflow.demo_data import demo_table
from privflow.flows.server import SERVE, LocalServer
from privflow.privacy.ledger import PrivacyLedger
from tests.conftest import ROOT
from tests.workspace import demo_workspace, files_containing

pytestmark = pytest.mark.slow


def _count(database_url: str, query: str) -> int:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    engine = create_engine(database_url)
    try:
        with engine.connect() as db:
            return db.execute(text(query)).scalar_one()
    except SQLAlchemyError:  # database or tables not created yet
        return 0
    finally:
        engine.dispose()


def completed_scheduled_runs(database_url: str) -> int:
    return _count(database_url, "SELECT COUNT(*) FROM flow_run WHERE state_type = 'COMPLETED' "
                                "AND deployment_id IS NOT NULL")


@pytest.fixture(params=["sqlite", "postgresql"])
def prefect_database(request, tmp_path):
    """(URL for the test to read, URL for Prefect's server to use) of the server's database."""
    if request.param == "sqlite":  # the embedded default: Prefect's SQLite in the project
        return None
    from sqlalchemy import create_engine, text

    server = request.getfixturevalue("postgres_server")
    name = f"prefect_{tmp_path.name[-8:].lower().replace('-', '_')}"
    with create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT").connect() as db:
        db.execute(text(f"CREATE DATABASE {name}"))
    return f"{server}/{name}"


def test_a_scheduled_flow_fires_and_completes(tmp_path, prefect_database):
    """`privflow serve` starts a Prefect server (on SQLite, or on PostgreSQL as a team runs
    it), its scheduler creates runs every 5 s, and they complete; only the first trains."""
    workspace = demo_workspace(tmp_path)
    # the runner looks for due runs every 2 s, not Prefect's 10: each run otherwise waited up to
    # 10 s after the one before it ended, and the queued-runs line is said at each look
    workspace.env["PREFECT_RUNNER_POLL_FREQUENCY"] = "2"
    if prefect_database:
        workspace.env["PREFECT_API_DATABASE_CONNECTION_URL"] = prefect_database.replace("+psycopg", "+asyncpg")
        database = prefect_database
    else:
        database = f"sqlite:///{workspace.repo / '.privflow' / 'prefect' / 'prefect.db'}"
    log = open(tmp_path / "logs" / "serve.log", "w")
    server = subprocess.Popen(["privflow", "serve", "--interval", "5"], cwd=workspace.repo, env=workspace.env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 420
        while completed_scheduled_runs(database) < 2 and time.monotonic() < deadline and server.poll() is None:
            time.sleep(2)
        assert completed_scheduled_runs(database) >= 2, (tmp_path / "logs" / "serve.log").read_text()[-3000:]
        # stopped as a service manager stops it (systemd, docker, kubernetes: SIGTERM), and while
        # a run is in flight, as a stop mostly comes: it must exit cleanly, not be killed. Before
        # serve stopped its runs first, Prefect's handler took the API server down under the run
        # and the serve hung (reproduced every time; in the suite it had looked like chance).
        while not _count(database, "SELECT COUNT(*) FROM flow_run WHERE state_type = 'RUNNING'") \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0, (tmp_path / "logs" / "serve.log").read_text()[-3000:]
        assert _count(database, "SELECT COUNT(*) FROM deployment WHERE paused") == 1  # no runs while it is down
        assert _count(database, "SELECT COUNT(*) FROM flow_run WHERE state_type = 'RUNNING'") == 0
    finally:
        if server.poll() is None:
            server.kill()
        log.close()
    assert (workspace.reports() / "report.html").exists()
    assert len(workspace.open_ledger().charges()) == 1  # later runs found everything up to date
    # the service's output: per run a line per stage and what it spent (the first run trained,
    # the later found everything up to date); DVC's and the stages' stream in each run's own log
    served = (tmp_path / "logs" / "serve.log").read_text()
    trained = [line for line in served.splitlines() if line.startswith("train@breast_cancer: ran in ")]
    assert len(trained) == 1 and "Running stage" not in served, served[-3000:]
    assert served.count("epsilon spent 2.9") == 1 and "breast_cancer: ran nothing (up to date)" in served
    # runs the 5 s schedule queued behind the one in progress: said as their number changes, not every poll
    waiting = re.findall(r"(\d+) scheduled runs skipped \(at capacity\)", served)
    assert all(before != after for before, after in zip(waiting, waiting[1:])), waiting
    run_logs = [path.read_text() for path in (workspace.repo / ".privflow" / "logs").glob("*.log")]
    assert len(run_logs) >= 2 and sum(log.count("Running stage 'train@breast_cancer'") for log in run_logs) == 1


def test_sigkilled_serve_leaves_no_prefect_server_behind(tmp_path):
    import psutil

    workspace = demo_workspace(tmp_path)
    log = open(tmp_path / "logs" / "serve.log", "w")
    serve = subprocess.Popen(["privflow", "serve", "--interval", "3600"], cwd=workspace.repo, env=workspace.env,
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline, servers = time.monotonic() + 240, []
        while not servers and time.monotonic() < deadline and serve.poll() is None:
            time.sleep(1)
            servers = [p for p in psutil.Process(serve.pid).children(recursive=True)
                       if "server" in p.cmdline() and "start" in p.cmdline()]
        assert servers, (tmp_path / "logs" / "serve.log").read_text()[-2000:]
        time.sleep(5)  # its API workers (uvicorn) started too
        servers += [child for p in servers for child in p.children(recursive=True)]
        serve.send_signal(signal.SIGKILL)
        serve.wait()
        gone, alive = psutil.wait_procs(servers, timeout=60)
        assert alive == [], "the Prefect server outlived a SIGKILLed `privflow serve`"
    finally:
        if serve.poll() is None:
            serve.kill()
        log.close()


def test_two_runs_at_once_in_one_project_train_once(tmp_path):
    workspace = demo_workspace(tmp_path)
    runs = [subprocess.Popen(["privflow", "run"], cwd=workspace.repo, env=workspace.env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert len(workspace.open_ledger().charges()) == 1
    assert sum("waiting for it" in output for output in outputs) == 1
    assert sum("none (all up to date)" in output for output in outputs) == 1


def test_two_clones_sharing_a_budget_that_fits_one_run_train_once(tmp_path):
    """Two projects on the same dataset and ledger, cap 3.5 (one run of 3.0): the ledger's
    transaction lets exactly one train; the other is refused before decrypting anything."""
    first, second = demo_workspace(tmp_path / "a"), demo_workspace(tmp_path / "b")
    ledger = tmp_path / "shared-ledger.sqlite"
    for workspace in (first, second):
        workspace.edit_params(privacy={"epsilon_cap": 3.5})
        workspace.env["PRIVFLOW_LEDGER"] = str(ledger)
        # one team, one keyring: it holds the key that authenticates the shared ledger's entries
        workspace.env["PRIVFLOW_KEYRING"] = first.env["PRIVFLOW_KEYRING"]
    runs = [subprocess.Popen(["privflow", "run"], cwd=w.repo, env=w.env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for w in (first, second)]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert sorted(run.returncode for run in runs) == [0, 2], outputs
    refused = outputs[[run.returncode for run in runs].index(2)]
    assert "BudgetExceeded" in refused and "over the cap 3.5" in refused
    shared = PrivacyLedger(ledger, key=first.open_ledger().key)
    charges = shared.charges("breast_cancer")
    assert len(charges) == 1 and shared.verify() == []


def test_infra_deployments_point_at_the_pipeline_with_valid_schedules():
    """infra/prefect.yaml, as `prefect deploy` reads it: entrypoints resolve, crons parse."""
    import importlib

    import yaml
    from prefect.client.schemas.schedules import CronSchedule

    document = yaml.safe_load((ROOT / "infra" / "prefect.yaml").read_text())
    assert document["prefect-version"].startswith("3.8")
    for deployment in document["deployments"]:
        # a module path: a team's own repository has no flows/ folder to point a file path at
        module, attribute = deployment["entrypoint"].rsplit(".", 1)
        flow = getattr(importlib.import_module(module), attribute)
        assert flow.name == "privflow-pipeline" and set(deployment["parameters"]) <= {"root", "datasets"}
        assert deployment["work_pool"]["name"] == "privflow" and deployment["concurrency_limit"] == 1
        for schedule in deployment.get("schedules", []):
            CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])


def _filter(api: str, objects: str) -> list[dict]:
    """Prefect's API read directly: a `prefect ... ls` is a CLI start (seconds) for the same rows."""
    request = urllib.request.Request(f"{api}/{objects}/filter", data=json.dumps({"limit": 50}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_the_infra_deployments_deploy_and_a_worker_runs_the_pipeline(tmp_path):
    """infra/README.md's step 3 as a team runs it, against a Prefect server on this machine (on
    SQLite; the scheduled test above covers PostgreSQL): a process work pool, `prefect deploy`
    of infra/prefect.yaml, a run of the on-demand deployment for one dataset, and a worker that
    takes it and runs the pipeline in the checkout $PRIVFLOW_PROJECT names, to a report and one
    charge. Failed with fastapi 0.151+ (422 on `"limit": null`): the pin in pyproject.toml."""
    _, rows = demo_table()
    # the flow starts its own stage host, as on a team's worker. This test process's shared host
    # would refuse its stages: Prefect's worker gives the flow a PYTHONPATH of its own, so they
    # each imported torch and the rest alone (45 s of run against 13 s)
    workspace = demo_workspace(tmp_path, hosted=False)
    env = {**workspace.env, "PRIVFLOW_PROJECT": str(workspace.repo)}
    server = LocalServer.launch(SERVE, env, tmp_path / "logs" / "prefect-server.log").wait_until_healthy()
    env["PREFECT_API_URL"] = server.url

    def prefect(*args: str) -> str:
        done = subprocess.run(["prefect", *args], cwd=workspace.repo, env=env, capture_output=True, text=True,
                              timeout=600)
        with open(tmp_path / "logs" / "prefect.log", "a") as log:
            log.write(f"$ prefect {' '.join(args)}\n{done.stdout}\n{done.stderr}\n")
        assert done.returncode == 0, (args, done.stdout[-3000:], done.stderr[-3000:])
        return done.stdout + done.stderr

    try:
        prefect("work-pool", "create", "privflow", "--type", "process")
        prefect("--no-prompt", "deploy", "--prefect-file", str(ROOT / "infra" / "prefect.yaml"), "--all")
        assert {"nightly", "on-demand"} <= {deployment["name"] for deployment in _filter(server.url, "deployments")}
        prefect("deployment", "run", "privflow-pipeline/on-demand", "-p", 'datasets=["breast_cancer"]')
        worked = prefect("worker", "start", "--pool", "privflow", "--run-once")
        runs = _filter(server.url, "flow_runs")
    finally:
        server.stop()
    ran = [run for run in runs if run["state_type"] != "SCHEDULED"]  # the nightly's are scheduled ahead
    assert [(run["state_type"], run["parameters"]) for run in ran] == [
        ("COMPLETED", {"root": ".", "datasets": ["breast_cancer"]})], runs
    assert ran[0]["deployment_id"] is not None
    assert (workspace.reports() / "report.html").exists()
    assert len(workspace.open_ledger().charges("breast_cancer")) == 1
    # what the worker's service log gets: a line per stage and what the run spent; the run's own
    # log DVC's lines once (not again through Prefect's console handler), and no advice to
    # `git add dvc.lock` after every stage
    trained = [line for line in worked.splitlines() if line.startswith("train@breast_cancer: ran in ")]
    assert len(trained) == 1 and "Running stage" not in worked, worked[-3000:]
    assert "breast_cancer: ran ingest, validate" in worked and "epsilon spent 2.9" in worked
    (run_log,) = (workspace.repo / ".privflow" / "logs").glob("*.log")
    logged_here = run_log.read_text()
    assert logged_here.count("Running stage 'train@breast_cancer'") == 1 and "git add" not in logged_here
    # the worker's flow logs to the server: its database (Prefect's home, ~/.prefect) holds no patient id
    database = workspace.base / "home" / ".prefect"
    logged = _count(f"sqlite:///{database / 'prefect.db'}", "SELECT COUNT(*) FROM log WHERE message LIKE '%train@%'")
    assert logged > 0  # the stages' lines did reach it
    ids = [rows[0][0].encode(), rows[5][0].encode()]
    assert files_containing([database, tmp_path / "logs", run_log.parent], ids) == {}
    assert files_containing([workspace.source.parent], ids)  # the ids are real
