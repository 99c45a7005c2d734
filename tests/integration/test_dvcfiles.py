"""DVC's files as privflow's process reads and writes them (privflow.flows.dvcfiles): dvc.lock
parsed without the round trip and at most once per text, yet written byte for byte as DVC
itself writes it; real DVC in temporary git repositories."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dvc.utils.serialize import _yaml

from privflow.flows import dvcfiles
from privflow.flows.stages import reproduce_stage, stage_order
from tests.repos import DVC, init_repo


def chain_project(root: Path, stages: int = 6) -> Path:
    """A chain of stages, each reading the previous one's output and a shared code file, so
    that dvc.lock has many entries with deps, outs and hashes, as privflow's does."""
    root.mkdir(parents=True)
    (root / "code.py").write_text("# shared code dep\n")
    (root / "params.yaml").write_text("scale: 3\n")
    lines = ["stages:"]
    for index in range(stages):
        source = f"out{index - 1}.txt" if index else "code.py"
        lines += [f"  step{index}:",
                  f"    cmd: {sys.executable} -c \"import pathlib; p = pathlib.Path('{source}'); "
                  f"pathlib.Path('out{index}.txt').write_text(p.read_text() * 2)\"",
                  f"    deps: [{source}, code.py]", "    params: [scale]", f"    outs: [out{index}.txt]"]
    (root / "dvc.yaml").write_text("\n".join(lines) + "\n")
    init_repo(root)
    return root


def test_the_flow_writes_the_lock_dvc_itself_writes(tmp_path, monkeypatch):
    by_dvc, by_flow = chain_project(tmp_path / "dvc"), chain_project(tmp_path / "flow")
    monkeypatch.chdir(by_flow)  # privflow runs from the project's root
    subprocess.run([DVC, "repro", "-q"], cwd=by_dvc, check=True)  # DVC's own process: its round trip
    for stage in stage_order(by_flow):
        assert reproduce_stage(by_flow, stage) is True
    assert (by_flow / "dvc.lock").read_text() == (by_dvc / "dvc.lock").read_text()
    status = subprocess.run([DVC, "status", "-q"], cwd=by_flow, capture_output=True, text=True)
    assert status.returncode == 0 and status.stdout == ""  # DVC reads what the flow wrote as up to date
    assert not any(reproduce_stage(by_flow, stage) for stage in stage_order(by_flow))


def test_the_lock_written_entry_by_entry_is_the_whole_dump(tmp_path):
    """Long commands are folded by the dumper at its width: an entry's text is the same
    wherever it stands in the lock, and an edited entry is written anew."""
    data = {"schema": "2.0", "stages": {
        f"stage{i}": {"cmd": "python -m privflow.stages.train " + "--option value " * (i + 3),
                      "deps": [{"path": f"p{i}", "hash": "md5", "md5": "0123abcd" * 4, "size": i}],
                      "params": {"params.yaml": {"datasets.x.train": {"epochs": i, "lr": 0.5}}}}
        for i in range(5)}}
    assert dvcfiles.lock_text(data) == dvcfiles._dumped(data)
    data["stages"]["stage2"]["deps"][0]["size"] = 99
    assert dvcfiles.lock_text(data) == dvcfiles._dumped(data)
    assert dvcfiles.lock_text({"schema": "2.0", "stages": {}}) == dvcfiles._dumped({"schema": "2.0", "stages": {}})


def test_an_edit_made_by_another_process_is_read_not_the_remembered_text(tmp_path, monkeypatch):
    root = chain_project(tmp_path / "p", stages=2)
    monkeypatch.chdir(root)
    for stage in stage_order(root):
        reproduce_stage(root, stage)
    (root / "code.py").write_text("# edited\n")
    subprocess.run([DVC, "repro", "-q", "step0"], cwd=root, check=True)  # another process rewrites dvc.lock
    assert reproduce_stage(root, "step0") is False  # the lock on disk is current for step0
    assert reproduce_stage(root, "step1") is True  # and says step1's input changed


def test_a_remembered_parse_is_a_copy_each_time():
    text = "schema: '2.0'\nstages:\n  a:\n    cmd: echo\n    outs:\n    - path: x\n      md5: d41d8c\n"
    first = _yaml.parse_yaml(text, "dvc.lock")
    first["stages"]["a"]["outs"].clear()  # DVC edits what it is given
    again = _yaml.parse_yaml(text, "dvc.lock")
    assert again["stages"]["a"]["outs"] == [{"path": "x", "md5": "d41d8c"}]
    assert _yaml.parse_yaml(text.replace("echo", "ls"), "dvc.lock")["stages"]["a"]["cmd"] == "ls"


def test_a_file_that_fails_its_schema_fails_every_time(tmp_path):
    """Only a check that passed is remembered: a bad dvc.lock is refused on every load."""
    import pytest
    from dvc.dvcfile import Lockfile
    from dvc.utils.strictyaml import YAMLValidationError, load

    path = tmp_path / "dvc.lock"
    path.write_text("schema: '2.0'\nstages:\n  a:\n    cmd: echo\n    outs: 3\n")
    for _ in range(2):
        with pytest.raises(YAMLValidationError):
            load(str(path), Lockfile.SCHEMA)
    path.write_text("schema: '2.0'\nstages:\n  a:\n    cmd: echo\n")
    assert load(str(path), Lockfile.SCHEMA)[0] == load(str(path), Lockfile.SCHEMA)[0] == {
        "schema": "2.0", "stages": {"a": {"cmd": "echo"}}}


def test_only_dvc_lock_skips_the_round_trip(tmp_path):
    """dvc.yaml may hold a user's comments: DVC's round trip keeps them when it edits it.
    dvc.lock is DVC's alone: read plainly, so a comment someone put there is not kept."""
    from dvc import dvcfile

    for name, kept in (("dvc.yaml", True), ("dvc.lock", False)):
        path = tmp_path / name
        path.write_text("# a note\nstages:\n  a:\n    cmd: echo  # why\n")
        with dvcfile.modify_yaml(str(path)) as data:
            data["stages"]["a"]["cmd"] = "echo done"
        assert _yaml.parse_yaml(path.read_text(), name) == {"stages": {"a": {"cmd": "echo done"}}}
        assert ("# why" in path.read_text()) is kept, name
    assert dvcfiles._PARSED_KEPT >= 3  # dvc.yaml, dvc.lock and a .dvc file at least
