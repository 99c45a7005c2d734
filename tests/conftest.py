from __future__ import annotations

import os

from privflow.stagehost import share_cores  # noqa: E402 (light: no numpy, no torch)

# Each xdist worker gets its share of the cores, and so do the stage commands and servers it
# starts (they inherit the environment); set before numpy and torch load, as they read it once.
# Two workers of two spinning OpenMP threads each on two cores ran the DP training unit tests
# in 162 s, of one thread each in 44 s, side by side.
share_cores(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))

import json  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from privflow.crypto.keys import Keyring  # noqa: E402
from privflow.crypto.vault import ArtifactIdentity, Vault  # noqa: E402
from privflow.data.schema_file import load_schema  # noqa: E402
from privflow.settings import KEYRING_ENV, LEDGER_ENV  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO_SCHEMA = ROOT / "schemas" / "breast_cancer.yaml"
FILE_SECONDS = Path(__file__).with_name("file_seconds.json")  # measured by --record-file-seconds


def pytest_addoption(parser):
    parser.addoption("--record-file-seconds", metavar="PATH",
                     help="write each test file's seconds (setup, call and teardown of its tests) as JSON, "
                          "the order `make test` starts files in (tests/file_seconds.json)")


def pytest_collection_modifyitems(config, items):
    """The heaviest test files first, as measured (longest processing time first). `make test`
    gives whole files to two workers (a file's shared pipeline run is made once) and xdist
    would start the files with most tests first: the e2e files, few tests of minutes each,
    came last, and one core ran the last four minutes alone. A file not measured yet counts
    as its folder's mean. The sort is stable: a file's tests keep their order."""
    seconds = json.loads(FILE_SECONDS.read_text()) if FILE_SECONDS.exists() else {}
    by_folder = defaultdict(list)
    for name, cost in seconds.items():
        by_folder[name.rpartition("/")[0]].append(cost)

    def cost(item) -> float:
        name = item.nodeid.partition("::")[0]
        folder = by_folder.get(name.rpartition("/")[0], [0.0])
        return seconds.get(name, sum(folder) / len(folder))

    items.sort(key=lambda item: -cost(item))


_FILE_SECONDS: defaultdict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    _FILE_SECONDS[report.nodeid.partition("::")[0]] += report.duration


def pytest_sessionfinish(session):
    path = session.config.getoption("--record-file-seconds")
    if path and not hasattr(session.config, "workerinput"):  # the controller holds every worker's reports
        ordered = dict(sorted(((k, round(v, 1)) for k, v in _FILE_SECONDS.items()), key=lambda kv: -kv[1]))
        Path(path).write_text(json.dumps(ordered, indent=1) + "\n")


@pytest.fixture(autouse=True)
def _private_keyring(tmp_path_factory, monkeypatch):
    """No test ever touches the user's real keyring or ledger. The keyring exists, as after
    `privflow keys init` (it also holds the key that authenticates ledger entries)."""
    path = tmp_path_factory.mktemp("keys") / "keyring.json"
    Keyring.open(path)
    monkeypatch.setenv(KEYRING_ENV, str(path))
    monkeypatch.setenv(LEDGER_ENV, str(tmp_path_factory.mktemp("ledger") / "ledger.sqlite"))


@pytest.fixture
def keyring(tmp_path) -> Keyring:
    return Keyring.open(tmp_path / "kr" / "keyring.json")


@pytest.fixture
def vault(keyring) -> Vault:
    return Vault(keyring, chunk_size=64)


@pytest.fixture
def identity() -> ArtifactIdentity:
    return ArtifactIdentity("demo", "ingest", "snapshot.sealed", "sha256:" + "ab" * 32)


@pytest.fixture(scope="session")
def demo_schema():
    return load_schema(DEMO_SCHEMA)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API (SQLite) for the in-process flow tests of this session. Its
    start may take longer than Prefect's 30 s on a loaded machine (it timed out in a suite run
    of three workers on two cores): as long as privflow waits for its own servers."""
    from prefect.testing.utilities import prefect_test_harness

    from privflow.flows.server import START_TIMEOUT

    with prefect_test_harness(server_startup_timeout=START_TIMEOUT):
        yield


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def postgres_server():
    """A throw-away PostgreSQL server from Debian's packages, on 127.0.0.1 (as user postgres)."""
    import getpass
    import shutil
    import socket
    import subprocess
    import tempfile

    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server not installed (Debian package postgresql); `make test` installs it")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="privflow-pg-"))  # outside pytest's 0700 root-only tmp
    if as_postgres:
        shutil.chown(base, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    user = "postgres" if as_postgres else getpass.getuser()
    subprocess.run([*as_postgres, bin_dir / "initdb", "-D", base / "data", "-A", "trust", "-U", user],
                   check=True, capture_output=True)
    subprocess.run([*as_postgres, bin_dir / "pg_ctl", "-D", base / "data", "-w", "-l", base / "log",
                    "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://{user}@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_postgres, bin_dir / "pg_ctl", "-D", base / "data", "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_location(request, tmp_path) -> str:
    """A fresh, empty ledger on each backend."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.sqlite")
    import uuid

    from sqlalchemy import create_engine, text

    server = request.getfixturevalue("postgres_server")
    name = f"ledger_{uuid.uuid4().hex[:12]}"
    with create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    return f"{server}/{name}"
