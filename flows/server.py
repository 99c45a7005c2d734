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
import tempfile
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


def seed_database() -> None:
    """A project without a Prefect database gets a copy of an empty one already migrated for
    this Prefect version, kept in the user's cache (made once, by Prefect's own `prefect server
    database upgrade`): otherwise the first run's server applies Prefect's migrations to a new
    SQLite file, 8-17 s on this 2-core machine, where the copy of the 1 MB result takes
    milliseconds. Only Prefect's default database in PREFECT_HOME is seeded (a team's
    PostgreSQL or server is left alone); when the template cannot be made, the server migrates
    as before."""
    settings = get_current_settings()
    home = Path(settings.home)
    database = home / "prefect.db"
    if settings.api.url or database.exists() or \
            settings.server.database.connection_url.get_secret_value() != f"sqlite+aiosqlite:///{database}":
        return
    template = _template()
    if template is None:
        return
    home.mkdir(parents=True, exist_ok=True)
    partial = home / f".prefect.db.{os.getpid()}"
    partial.write_bytes(template.read_bytes())
    try:
        os.link(partial, database)  # never over a database another run's server already opened
    except FileExistsError:
        pass
    finally:
        partial.unlink()


def _template() -> Path | None:
    """The migrated empty database for this Prefect version, made when missing (None if that fails)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "privflow"
    template = cache / f"prefect-{prefect.__version__}.db"
    if template.exists():
        return template
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as work:
        environment = {key: value for key, value in os.environ.items()
                       if not key.startswith(("PREFECT_API_DATABASE", "PREFECT_SERVER_DATABASE"))}
        made = subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
                              env={**environment, "PREFECT_HOME": work}, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        fresh = Path(work) / "prefect.db"
        if made.returncode != 0 or not fresh.exists():
            return None
        with closing(sqlite3.connect(fresh)) as connection:  # out of WAL mode: the one file holds everything
            connection.execute("PRAGMA journal_mode=DELETE")
        os.replace(fresh, template)  # atomic: a concurrent run sees the whole template or none
    return template


def warm_temporary_server() -> Future:
    """Seed the database and start Prefect's temporary server (the one a flow run starts for
    itself when no API is set) in a background thread, so its start overlaps the plan; the
    flow then finds it running. Wait on the result before the flow starts."""
    def start() -> None:
        settings = get_current_settings()
        if settings.api.url or not settings.server.ephemeral.enabled:
            return  # a team's server, or none allowed: the flow says so itself
        seed_database()
        from prefect.server.api.server import SubprocessASGIServer, subprocess_server_logger

        # "Starting temporary server on ..." would land on the terminal, ahead of the run's log
        subprocess_server_logger.setLevel(logging.WARNING)
        SubprocessASGIServer().start()

    pool = ThreadPoolExecutor(1, thread_name_prefix="privflow-prefect")
    started = pool.submit(start)
    pool.shutdown(wait=False)  # the thread ends with the start; nothing waits for it here
    return started
