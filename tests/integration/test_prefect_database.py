"""A new project's Prefect database: the first server on a machine migrates it and keeps an
empty copy as the template; later new projects start from that copy (flows.server). Never
over an existing database, never for a database or server Prefect was pointed at."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import prefect
import prefect.server.database

WARM = "from privflow.flows.server import warm_temporary_server as w; w().result()"
SEED = "from privflow.flows.server import default_database as d, seed_database as s; s(d())"


def in_project(code: str, home: Path, cache: Path, **extra: str) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    subprocess.run([sys.executable, "-c", code], check=True, env={
        **environment, "PREFECT_HOME": str(home), "XDG_CACHE_HOME": str(cache),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra})


def revision(database: Path) -> str:
    with closing(sqlite3.connect(database)) as connection:
        return connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def sqlite_head() -> str:
    """The last of Prefect's SQLite migrations, from its own migration scripts."""
    from alembic.script import ScriptDirectory

    migrations = Path(prefect.server.database.__file__).parent / "_migrations"
    return ScriptDirectory(str(migrations), version_locations=[str(migrations / "versions" / "sqlite")]).get_current_head()


def test_the_first_server_leaves_a_migrated_template_and_later_projects_start_from_it(tmp_path):
    cache = tmp_path / "cache"
    template = cache / "privflow" / f"prefect-{prefect.__version__}.db"
    in_project(WARM, tmp_path / "first", cache)  # a real temporary server, started and stopped
    assert revision(template) == sqlite_head()  # a server starting on it has nothing to migrate
    with closing(sqlite3.connect(template)) as connection:
        assert connection.execute("SELECT count(*) FROM flow_run").fetchone()[0] == 0
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one file
    kept = template.read_bytes()
    in_project(SEED, tmp_path / "second", cache)
    assert (tmp_path / "second" / "prefect.db").read_bytes() == kept
    assert sorted(p.name for p in (tmp_path / "second").iterdir()) == ["prefect.db"]  # no partial copy left
    in_project(WARM, tmp_path / "third", cache)
    assert template.read_bytes() == kept  # made once
    # the seeded database's server did not register Prefect's block types again: they are the template's
    assert block_types(tmp_path / "third" / "prefect.db") == block_types(template)


def block_types(database: Path) -> dict[str, str]:
    """Each block type and when it was last registered."""
    with closing(sqlite3.connect(database)) as connection:
        return dict(connection.execute("SELECT slug, updated FROM block_type").fetchall())


def test_the_run_server_dies_with_a_sigkilled_run(tmp_path):
    """`privflow run` starts the flow's server itself (flows.server.warm_temporary_server): a
    run killed by SIGKILL, which no handler sees, leaves no server (and no open database) behind."""
    import psutil

    code = ("import time; from privflow.flows.server import warm_temporary_server as w; "
            "print(w().result().process.pid, flush=True); time.sleep(600)")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    run = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env={
        **environment, "PREFECT_HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    server = psutil.Process(int(run.stdout.readline()))
    assert server.is_running() and "uvicorn" in server.cmdline()
    run.send_signal(signal.SIGKILL)
    run.wait()
    gone, alive = psutil.wait_procs([server], timeout=60)
    assert gone and not alive


def test_an_existing_database_or_one_kept_elsewhere_is_left_alone(tmp_path):
    cache = tmp_path / "cache"
    (cache / "privflow").mkdir(parents=True)
    (cache / "privflow" / f"prefect-{prefect.__version__}.db").write_bytes(b"template")
    home = tmp_path / "home"
    home.mkdir()
    (home / "prefect.db").write_bytes(b"a project's own runs")
    in_project(SEED, home, cache)
    assert (home / "prefect.db").read_bytes() == b"a project's own runs"
    seeds = "from privflow.flows.server import default_database as d; assert d() is None"
    in_project(seeds, tmp_path / "elsewhere", cache,
               PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path / 'team.db'}")
    in_project(seeds, tmp_path / "served", cache, PREFECT_API_URL="http://127.0.0.1:4200/api")
