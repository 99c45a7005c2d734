"""No row value in metadata or messages when the first line is not the declared header: a
file exported without its header line, a header that carries a value, a folder whose second
file lost its header. Searched: artifacts, DVC cache and remote, Prefect's database, logs,
every message printed, the temp dir."""

from __future__ import annotations

import json

import pytest

from privflow.demo_data import demo_table
from tests.workspace import demo_workspace, files_containing

pytestmark = pytest.mark.slow

FIRST_ROW_CANARY = "P-CANARY-424242"        # the person id of the row that takes the header's place
HEADER_CANARY = "CANARY-HEADER-7c1e"        # a value written where a column name should be


def _search(workspace, printed: str) -> dict:
    (workspace.base / "logs" / "printed.log").write_text(printed)
    workspace.run("dvc", "remote", "add", "-f", "-d", "shared", str(workspace.base / "remote"), check=True)
    workspace.run("dvc", "push")  # whatever was cached (the ingest snapshot) goes to the remote
    roots = [workspace.repo, workspace.base / "remote", workspace.base / "logs", workspace.base / "tmp",
             workspace.base / "dvc-site"]
    return files_containing(roots, [FIRST_ROW_CANARY.encode(), HEADER_CANARY.encode()])


def _lines(header, rows) -> str:
    return "\n".join(",".join(r) for r in [header, *rows]) + "\n"


@pytest.mark.parametrize("shape", ["headerless file", "canary in the header", "folder, second file headerless"])
def test_a_first_line_that_is_not_the_header_is_never_shown(tmp_path, shape):
    workspace = demo_workspace(tmp_path)
    header, rows = demo_table()
    rows = [r for r in rows if len(r) == len(header)]
    rows[0][0] = FIRST_ROW_CANARY
    if shape == "headerless file":
        workspace.source.write_text(_lines(rows[0], rows[1:]))
    elif shape == "canary in the header":
        workspace.source.write_text(_lines([HEADER_CANARY if h == "mean_area" else h for h in header], rows))
    else:
        folder = workspace.source.parent / "export"
        folder.mkdir()
        (folder / "part-1.csv").write_text(_lines(header, rows[1:100]))
        (folder / "part-2.csv").write_text(_lines(rows[0], rows[100:]))
        workspace.edit_dataset(source=str(folder))
    result = workspace.run("privflow", "run")
    printed = result.stdout + result.stderr
    assert result.returncode == 2 and "the first line does not name the schema's columns" in " ".join(printed.split())
    manifest = json.loads((workspace.artifacts("ingest") / "manifest.json").read_text())
    if shape == "folder, second file headerless":  # the manifest lists the first file's (declared) names
        assert manifest["columns"] == header and manifest["files"] == ["part-1.csv", "part-2.csv"]
    else:
        assert manifest["columns"] == [] and manifest["header_matches_schema"] is False
    assert _search(workspace, printed) == {}  # predict's message: tests/unit/test_compress.py
    assert files_containing([workspace.source.parent], [FIRST_ROW_CANARY.encode()])  # the canary is real
