"""A Prefect server for `privflow serve`: schedules need one (the temporary API that runs use
otherwise cannot schedule). Uses $PREFECT_API_URL when set (a team's server, see infra/);
else starts `prefect server start` on this machine, on Prefect's SQLite database in the
project's .privflow/prefect, for as long as `privflow serve` runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect.settings import PREFECT_API_URL, temporary_settings

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
