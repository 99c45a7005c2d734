"""Prefect's API for privflow.

- `privflow serve`: schedules need a lasting server (the temporary API that runs use
  otherwise cannot schedule). Uses $PREFECT_API_URL when set (a team's server, see infra/);
  else starts `prefect server start` on this machine, on Prefect's SQLite database in the
  project's .privflow/prefect, for as long as `privflow serve` runs.
- `privflow run`: Prefect's own temporary server, started in the background while the plan
  is made (`warm_temporary_server`), on a database seeded from a migrated template
  (`seed_database`) when the project has none yet.
"""

from __future__ import annotations

import logging
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
from contextlib import closing, contextmanager
from pathlib import Path

import prefect
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

from privflow.errors import PrivflowError
from privflow.stageserver import die_with_parent

START_TIMEOUT = 180


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop_with_parent() -> None:
    """In the server's process, before exec: SIGTERM when `privflow serve` dies, even by
    SIGKILL, so no server is left orphaned. (Nothing is imported here: after fork, before
    exec, another thread may hold the import lock.)"""
    die_with_parent(signal.SIGTERM)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def prefect_api(log: Path) -> Iterator[str]:
    """The API URL to serve against; a local server is started (and stopped) when none is set."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    url = f"http://127.0.0.1:{_free_port()}/api"
    port = url.rsplit(":", 1)[1].split("/")[0]
    database = default_database()
    if database is not None:
        seed_database(database)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as output:
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", port, "--no-ui"], stdout=output, stderr=subprocess.STDOUT,
                                  preexec_fn=_stop_with_parent)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise PrivflowError(f"the local Prefect server did not start; see {log}")
            time.sleep(0.5)
        with temporary_settings({PREFECT_API_URL: url}):  # settings are cached: set them, not the env
            yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


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


def seed_database(database: Path) -> None:
    """A new project's database starts as a copy of the template, when there is one: the
    first server on a new SQLite file applies Prefect's migrations (8-17 s on this 2-core
    machine), the copy of the 1 MB result takes milliseconds."""
    template = template_path()
    if database.exists() or not template.exists():
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    partial = database.with_name(f".{database.name}.{os.getpid()}")
    partial.write_bytes(template.read_bytes())
    try:
        os.link(partial, database)  # never over a database another run's server already opened
    except FileExistsError:
        pass
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


def warm_temporary_server() -> Future:
    """Start Prefect's temporary server (the one a flow run starts for itself when no API is
    set) in a background thread, so its start overlaps the plan; the flow then finds it
    running. Wait on the result before the flow starts. A new project's database is seeded
    from the template, or, on a machine without one yet, becomes it once migrated."""
    def start() -> None:
        settings = get_current_settings()
        if settings.api.url or not settings.server.ephemeral.enabled:
            return  # a team's server, or none allowed: the flow says so itself
        database = default_database()
        new = database is not None and not database.exists()
        if new:
            seed_database(database)
        from prefect.server.api.server import SubprocessASGIServer, subprocess_server_logger

        # "Starting temporary server on ..." would land on the terminal, ahead of the run's log
        subprocess_server_logger.setLevel(logging.WARNING)
        SubprocessASGIServer().start()
        if new and not template_path().exists():
            keep_as_template(database)

    pool = ThreadPoolExecutor(1, thread_name_prefix="privflow-prefect")
    started = pool.submit(start)
    pool.shutdown(wait=False)  # the thread ends with the start; nothing waits for it here
    return started
