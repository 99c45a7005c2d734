"""A dvc.lock cut short by a killed `dvc repro` is mended from the copy the stages keep, and
privflow's own DVC writes cannot be cut: real DVC in a temp git repository, real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from privflow.errors import PrivflowError
from privflow.flows.stages import open_repo, read_dag
from privflow.lockfile import LAST_COMPLETE
from tests.repos import init_repo

BIN = Path(sys.executable).parent
# each stage starts the way every privflow stage does (privflow.errors.run_stage), then works
STAGE = "from privflow.errors import run_stage; import pathlib, sys; run_stage(lambda: pathlib.Path(sys.argv[2]).write_text(pathlib.Path(sys.argv[1]).read_text() + '+'))"  # noqa: E501


def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dvc"), *args], cwd=root, capture_output=True, text=True, check=check)


@pytest.fixture
def project(tmp_path) -> Path:
    """Three stages in a chain, run once: dvc.lock records all three."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "stage.py").write_text(STAGE)
    (root / "source.txt").write_text("source")
    chain = [("first", "source.txt", "a.txt"), ("second", "a.txt", "b.txt"), ("third", "b.txt", "c.txt")]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        name: {"cmd": f"{sys.executable} stage.py {src} {out}", "deps": ["stage.py", src], "outs": [out]}
        for name, src, out in chain}}, sort_keys=False))
    init_repo(root)
    dvc(root, "repro")
    return root


def redone(result: subprocess.CompletedProcess) -> list[str]:
    """The stages DVC ran again, or put back from its run cache (same deps, same command)."""
    return [line.split("'")[1] for line in result.stdout.splitlines()
            if line.startswith("Running stage") or line.endswith("is cached - skipping run, checking out outputs")]


def test_each_stage_keeps_the_lock_it_found_complete(project):
    copy = yaml.safe_load((project / LAST_COMPLETE).read_text())
    assert list(copy["stages"]) == ["first", "second"]  # what DVC had recorded as `third` started
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert copy["stages"]["second"] == lock["stages"]["second"]


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.6, 0.97])
def test_a_cut_lock_is_put_back_and_only_the_stage_being_recorded_runs_again(project, keep, capsys):
    lock = project / "dvc.lock"
    whole = lock.read_text()
    lock.write_text(whole[:int(len(whole) * keep)])  # a kill while DVC wrote it: any prefix
    if keep:  # DVC refuses it, or takes it wrongly: a stage it recorded looks changed
        status = dvc(project, "status", check=False)
        assert status.returncode != 0 or "changed" in status.stdout
    assert read_dag(project).order == ["first", "second", "third"]  # opening the project mends it
    said = capsys.readouterr().err
    assert "dvc.lock was cut short" in said and "will run again" in said
    cut = list((project / ".privflow").glob("dvc.lock.cut-*"))
    assert [p.read_text() for p in cut] == [whole[:int(len(whole) * keep)]]  # kept for an audit
    assert redone(dvc(project, "repro")) == ["third"]
    assert yaml.safe_load(lock.read_text()) == yaml.safe_load(whole)


def test_every_cut_inside_a_line_is_seen_as_a_cut(project):
    from privflow.lockfile import looks_complete

    whole = (project / "dvc.lock").read_text()
    assert looks_complete(whole)
    # DVC flushes its buffer wherever it fills: a cut falls inside a line nearly always; one at
    # a line's end can look whole (an out without its later items), and that stage runs again
    inside = [at for at in range(len(whole)) if whole[at - 1:at] != "\n"]
    assert [at for at in inside if looks_complete(whole[:at])] == []


def test_the_repair_command_mends_or_says_there_is_nothing_to_mend(project):
    lock = project / "dvc.lock"
    whole = lock.read_text()
    fine = subprocess.run([str(BIN / "privflow"), "repair"], cwd=project, capture_output=True, text=True)
    assert fine.returncode == 0 and "nothing to mend" in fine.stdout
    lock.write_text(whole[: len(whole) // 2])
    mended = subprocess.run([str(BIN / "privflow"), "repair"], cwd=project, capture_output=True, text=True)
    assert mended.returncode == 0 and "cut short" in " ".join(mended.stdout.split())
    assert redone(dvc(project, "repro")) == ["third"]


def test_without_a_copy_the_refusal_says_how_to_put_the_lock_back(project):
    (project / LAST_COMPLETE).unlink()
    lock = project / "dvc.lock"
    whole = lock.read_text()
    cut = whole[:whole.index("hash: md") + len("hash: md")]  # DVC fails on the hash's name
    lock.write_text(cut)
    with pytest.raises(PrivflowError, match=r"no complete copy.*git checkout dvc.lock"):
        open_repo(project)
    assert lock.read_text() == cut  # nothing was overwritten


def test_privflow_writes_dvc_lock_by_rename_so_a_kill_leaves_old_or_new(project):
    from dvc.utils.serialize import modify_yaml

    lock = project / "dvc.lock"
    before = lock.stat()
    with modify_yaml(str(lock)) as data:  # what DVC does as it records a stage, in our process
        data["stages"]["first"]["cmd"] += " "
    after = lock.stat()
    assert after.st_ino != before.st_ino  # a new file renamed over the old: never truncated in place
    assert after.st_mode == before.st_mode
    assert yaml.safe_load(lock.read_text())["stages"]["first"]["cmd"].endswith(" ")
    assert not [p for p in os.listdir(project) if p.endswith(".partial")]


def test_a_graph_read_before_is_not_loaded_again_but_a_cut_lock_is_still_mended(project, capsys):
    """A run's flow asks for the stage graph several times (the order, each reports folder)."""
    first = read_dag(project)
    lock = project / "dvc.lock"
    lock.write_text(lock.read_text()[:40])  # another run, killed while DVC wrote it
    assert read_dag(project) is first  # the same dvc.yaml and params.yaml: from memory
    assert "dvc.lock was cut short" in capsys.readouterr().err  # and mended all the same
    assert dvc(project, "status").returncode == 0
    pipeline = yaml.safe_load((project / "dvc.yaml").read_text())
    pipeline["stages"]["third"]["outs"] = ["d.txt"]
    (project / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    assert read_dag(project).outputs["third"] == [project / "d.txt"]  # an edited dvc.yaml is read anew


def test_a_cut_path_lock_file_is_replaced_and_privflow_writes_it_by_rename(project, capsys):
    from dvc import rwlock
    from dvc.fs import localfs

    from privflow.flows.dvc_repairs import repair_rwlock

    path = project / ".dvc" / "tmp" / "rwlock"
    path.write_text('{"read": {"a.txt": [{"pid": 1')  # a kill while DVC wrote it
    (project / "source.txt").write_text("changed")
    refused = dvc(project, "repro", check=False)
    assert refused.returncode != 0 and "RWLock-file" in refused.stderr and "corrupted" in refused.stderr
    read_dag(project)  # opening the project mends it
    assert "rwlock was cut short" in " ".join(capsys.readouterr().err.split())
    assert (project / ".privflow" / "dvc-rwlock.cut").read_text().startswith('{"read"')
    assert redone(dvc(project, "repro")) == ["first", "second", "third"]
    with open_repo(project, mend=False) as repo:
        assert repair_rwlock(repo) is None  # nothing left to mend
    before = path.stat().st_ino
    with rwlock.rwlock(str(path.parent), localfs, "test", ["a.txt"], [], False):
        assert path.stat().st_ino != before  # written beside it and renamed, never truncated in place
        assert json.loads(path.read_text())["read"]["a.txt"][0]["cmd"] == "test"
    assert json.loads(path.read_text()).get("read", {}) == {}  # released
