"""Prefect's API for privflow.

- `privflow serve`: schedules need a lasting server (the temporary API that runs use
  otherwise cannot schedule). Uses $PREFECT_API_URL when set (a team's server, see infra/);
  else starts `prefect server start` on this machine, on Prefect's SQLite database in the
  project's .privflow/prefect, for as long as `privflow serve` runs.
- `privflow run`: the temporary server a flow run would start for itself (the same
  command as Prefect's ephemeral mode: the API and the ephemeral services, no UI), started
  here while the plan is made (`warm_temporary_server`) and handed to the flow as its API
  URL (`temporary_api`), on a database seeded from a migrated template (`seed_database`)
  when the project has none yet. Started here rather than by Prefect, because Prefect's own
  launcher imports the whole server (FastAPI, SQLAlchemy, every route: 5.7 s on this 2-core
  machine) in the CLI's process only to start it in another one; and because the server then
  dies with the run even when the run is SIGKILLed.

A seeded database already holds Prefect's block types (the template was copied after its
server registered them), so the server on it is told not to register them again: Prefect's
memo of that registration is kept per database URL, so every new project would otherwise
redo it (about 1 s of the server's start on this 2-core machine).
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import prefect
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

from privflow.errors import PrivflowError
from privflow.stageserver import die_with_parent

START_TIMEOUT = 180
SKIP_BLOCKS = {"PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false"}  # for a server on a seeded database
# What prefect.server.api.server.SubprocessASGIServer runs (Prefect is pinned in constraints.txt)
TEMPORARY = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parents[1]), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--log-level", "error", "--lifespan", "on"]
TEMPORARY_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
SERVE = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--no-ui"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop_with_parent() -> None:
    """In the server's process, before exec: SIGTERM when the thread that started it (the
    main thread of `privflow run` or `privflow serve`) dies, even by SIGKILL, so no server is
    left orphaned. (Nothing is imported here: after fork, before exec, another thread may
    hold the import lock.)"""
    die_with_parent(signal.SIGTERM)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass
class LocalServer:
    """A Prefect API server process on this machine's loopback."""
    process: subprocess.Popen
    url: str
    log: Path

    @classmethod
    def launch(cls, command: list[str], env: dict[str, str], log: Path) -> LocalServer:
        """Must be called from the thread that outlives the server (see _stop_with_parent)."""
        port = _free_port()
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as output:
            process = subprocess.Popen([*command, "--port", str(port)], stdout=output, stderr=subprocess.STDOUT,
                                       env=env, preexec_fn=_stop_with_parent)
        return cls(process, f"http://127.0.0.1:{port}/api", log)

    def wait_until_healthy(self) -> LocalServer:
        deadline = time.monotonic() + START_TIMEOUT
        while not _healthy(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise PrivflowError(f"the local Prefect server did not start; see {self.log}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def prefect_api(log: Path) -> Iterator[str]:
    """The API URL to serve against; a local server is started (and stopped) when none is set."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    database = default_database()
    seeded = database is not None and seed_database(database)
    server = LocalServer.launch(SERVE, {**os.environ, **(SKIP_BLOCKS if seeded else {})}, log)
    try:
        server.wait_until_healthy()
        with temporary_settings({PREFECT_API_URL: server.url}):  # settings are cached: set them, not the env
            yield server.url
    finally:
        server.stop()


def default_database() -> Path | None:
    """Prefect's own SQLite file in PREFECT_HOME, where the run's temporary server keeps its
    records; None when Prefect was pointed at another database or at a server (a team's)."""
    settings = get_current_settings()
    database = Path(settings.home) / "prefect.db"
    if settings.api.url or settings.server.database.connection_url.get_secret_value() != \
            f"sqlite+aiosqlite:///{database}":
        return None
    return database


def template_path() -> Path:
    """An empty database migrated by this Prefect version, kept in the user's cache."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "privflow"
    return cache / f"prefect-{prefect.__version__}.db"


def seed_database(database: Path) -> bool:
    """A new project's database starts as a copy of the template, when there is one: the
    first server on a new SQLite file applies Prefect's migrations (8-17 s on this 2-core
    machine), the copy of the 1 MB result takes milliseconds. Whether this call seeded it."""
    template = template_path()
    if database.exists() or not template.exists():
        return False
    database.parent.mkdir(parents=True, exist_ok=True)
    partial = database.with_name(f".{database.name}.{os.getpid()}")
    partial.write_bytes(template.read_bytes())
    try:
        os.link(partial, database)  # never over a database another run's server already opened
        return True
    except FileExistsError:
        return False
    finally:
        partial.unlink()


def keep_as_template(database: Path) -> None:
    """After a server migrated a new project's database, and before any flow ran on it: a
    consistent copy (SQLite's backup API: the server has it open) becomes the template, unless
    a flow run is already recorded (another run in the same project got there first)."""
    template = template_path()
    template.parent.mkdir(parents=True, exist_ok=True)
    partial = template.with_name(f".{template.name}.{os.getpid()}")
    with closing(sqlite3.connect(database)) as source, closing(sqlite3.connect(partial)) as copy:
        source.backup(copy)
        empty = copy.execute("SELECT count(*) FROM flow_run").fetchone()[0] == 0
        copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    if empty:
        os.replace(partial, template)  # atomic: a concurrent run sees the whole template or none
    else:
        partial.unlink()


def warm_temporary_server() -> Future | None:
    """Start the run's temporary Prefect server now, so that its start overlaps the plan (and
    the stage host's); None when the run uses a team's server (or Prefect allows none: the flow
    says so itself). The future gives the LocalServer once it answers; `temporary_api` hands
    it to the flow. A new project's database is seeded from the template, or, on a machine
    without one yet, becomes it once migrated."""
    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None
    database = default_database()
    new = database is not None and not database.exists()
    seeded = new and seed_database(database)
    env = {**os.environ, **settings.to_environment_variables(exclude_unset=True), **TEMPORARY_ENV,
           **(SKIP_BLOCKS if seeded else {})}
    server = LocalServer.launch(TEMPORARY, env, Path(settings.home) / "temporary-server.log")
    # stopped as Prefect stops its own: at exit, after Prefect's exit hooks (threading's, which
    # run first) have sent the run's last logs and events to it
    atexit.register(server.stop)

    def healthy() -> LocalServer:
        server.wait_until_healthy()
        if new and not template_path().exists():
            keep_as_template(database)
        return server

    pool = ThreadPoolExecutor(1, thread_name_prefix="privflow-prefect")
    started = pool.submit(healthy)
    pool.shutdown(wait=False)  # the thread ends once the server answers; nothing waits for it here
    return started


@contextmanager
def temporary_api(started: Future | None) -> Iterator[None]:
    """The flow's API is the server `warm_temporary_server` started. Without one (none was
    started, or it failed) the flow starts Prefect's own, or says why it cannot."""
    try:
        server = started.result() if started is not None else None
    except Exception:  # noqa: BLE001 (the flow then starts its own server, and says why it cannot)
        server = None
    with temporary_settings({PREFECT_API_URL: server.url}) if server else nullcontext():
        yield


RUN_STOP_SECONDS = 30  # for a flow run to reschedule itself and exit, once told to stop


def _stopped(pid: int) -> bool:
    """Whether a child process has ended (exited or a zombie its parent has not reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def stop_runs_before_the_server() -> None:
    """On SIGTERM, `privflow serve` stops its flow runs before anything else. Prefect's own
    handler (Runner.handle_sigterm) exits at once: the local API server went down with it while
    a run was still in flight, and the run, and with it the serve process, then hung retrying
    an API that was gone (reproduced: SIGTERM during any scheduled run). Now each run's process
    gets SIGTERM first: Prefect's engine marks the run for resubmission (AwaitingRetry) while
    the API is still up and exits, its stages dying with it (killed at any point, a stage
    leaves no partial output; a killed training resumes from its checkpoint). Then the
    deployment is paused, and Prefect's handler ends the serve; the server stops last."""
    from prefect.client.orchestration import get_client
    from prefect.runner import Runner

    prefect_handler = Runner.handle_sigterm
    if getattr(prefect_handler, "privflow_runs_first", False):
        return

    def handle_sigterm(self, *args, **kwargs):
        pids = [handle.pid for handle in list(self._process_manager._process_map.values()) if handle.pid]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + RUN_STOP_SECONDS
        while not all(_stopped(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        with get_client(sync_client=True) as client:  # while the API is surely up (Prefect's own pause raced it)
            for deployment in self._deployment_registry.get_deployment_ids():
                client.pause_deployment(deployment)
        return prefect_handler(self, *args, **kwargs)

    handle_sigterm.privflow_runs_first = True
    Runner.handle_sigterm = handle_sigterm
