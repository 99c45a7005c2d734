"""A new project's Prefect database is seeded from a migrated template (flows.server), never
over an existing one, and never for a database Prefect was told to keep elsewhere."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import prefect
import prefect.server.database

SEED = "from privflow.flows.server import seed_database; seed_database()"


def seed(home: Path, cache: Path, **extra: str) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    subprocess.run([sys.executable, "-c", SEED], check=True, env={
        **environment, "PREFECT_HOME": str(home), "XDG_CACHE_HOME": str(cache), **extra})


def revision(database: Path) -> str:
    with closing(sqlite3.connect(database)) as connection:
        return connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def sqlite_head() -> str:
    """The last of Prefect's SQLite migrations, from its own migration scripts."""
    from alembic.script import ScriptDirectory

    migrations = Path(prefect.server.database.__file__).parent / "_migrations"
    return ScriptDirectory(str(migrations), version_locations=[str(migrations / "versions" / "sqlite")]).get_current_head()


def test_a_new_project_gets_a_migrated_database_and_later_ones_reuse_the_template(tmp_path):
    cache = tmp_path / "cache"
    seed(tmp_path / "first", cache)
    template = cache / "privflow" / f"prefect-{prefect.__version__}.db"
    database = tmp_path / "first" / "prefect.db"
    assert database.read_bytes() == template.read_bytes()
    assert revision(database) == sqlite_head()  # the server starts on it without migrating
    made = template.stat().st_mtime_ns
    seed(tmp_path / "second", cache)
    assert template.stat().st_mtime_ns == made  # made once
    assert (tmp_path / "second" / "prefect.db").read_bytes() == template.read_bytes()
    assert sorted(p.name for p in (tmp_path / "second").iterdir()) == ["prefect.db"]  # no partial copy left


def test_an_existing_database_or_one_kept_elsewhere_is_left_alone(tmp_path):
    cache = tmp_path / "cache"
    home = tmp_path / "home"
    home.mkdir()
    (home / "prefect.db").write_bytes(b"a project's own runs")
    seed(home, cache)
    assert (home / "prefect.db").read_bytes() == b"a project's own runs"
    elsewhere = tmp_path / "elsewhere"
    seed(elsewhere, cache, PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path / 'team.db'}")
    seed(tmp_path / "served", cache, PREFECT_API_URL="http://127.0.0.1:4200/api")
    assert not (elsewhere / "prefect.db").exists() and not (tmp_path / "served" / "prefect.db").exists()
    assert not (cache / "privflow").exists()  # no template made for nothing
