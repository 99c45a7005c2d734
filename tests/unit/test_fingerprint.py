"""A source's fingerprint: the keyed id through which alone DVC sees the source (dvc.lock never
holds a digest of the private bytes), cheap to take again when no file changed."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml

from privflow.crypto.keys import Keyring
from privflow.crypto.vault import Vault
from privflow.data import fingerprint
from privflow.data.fingerprint import read_fingerprint, source_id, take_fingerprints
from privflow.data.snapshot import ingest_snapshot
from privflow.errors import DatasetError
from privflow.project import SPECS, runs_every_time, stage_entry
from privflow.settings import IngestSettings
from tests.conftest import ROOT

ROWS = b"id,age\nP-1,41\nP-2,57\n"


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "export.csv"
    path.write_bytes(ROWS)
    return path


def test_the_fingerprint_is_the_snapshot_id_ingest_gives_the_same_bytes(source, vault, tmp_path):
    manifest = ingest_snapshot("d", IngestSettings(source=source, log=tmp_path / "log"), vault, tmp_path / "ingest")
    assert source_id(source, vault) == manifest.snapshot_id
    assert manifest.snapshot_id == vault.snapshot_id("sha256:" + hashlib.sha256(ROWS).hexdigest())


def test_it_is_keyed_and_tells_one_changed_value(source, vault, tmp_path):
    other = Vault(Keyring.open(tmp_path / "other" / "keyring.json"))
    first = source_id(source, vault)
    assert source_id(source, other) != first  # without the keyring, a guess of the bytes cannot be tested
    assert hashlib.sha256(ROWS).hexdigest() not in first and hashlib.md5(ROWS).hexdigest() not in first
    source.write_bytes(ROWS.replace(b"57", b"58"))
    assert source_id(source, vault) != first


def test_unchanged_files_are_not_read_again(source, vault, tmp_path, monkeypatch):
    cache = tmp_path / ".privflow" / "fingerprints" / "d.json"
    first = source_id(source, vault, cache)
    remembered = json.loads(cache.read_text())
    # the cache holds MACs only: no digest of the bytes and no size, even on the local disk
    assert set(remembered) == {"stat", "snapshot_id"} and remembered["snapshot_id"] == first
    assert remembered["stat"].startswith("hmac-sha256:") and remembered["stat"] != first

    def never(*args):
        raise AssertionError("the source was read again")

    monkeypatch.setattr(fingerprint, "snapshot_id", never)
    assert source_id(source, vault, cache) == first
    monkeypatch.undo()
    source.write_bytes(ROWS.replace(b"41", b"42"))  # same size; its mtime (and so the cache's key) moves
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert source_id(source, vault, cache) not in (first, None)
    other = Vault(Keyring.open(tmp_path / "other" / "keyring.json"))  # a cache from another keyring: not trusted
    assert source_id(source, other, cache) == source_id(source, other)


def test_a_folder_source_changes_with_a_new_file(tmp_path, vault):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "part-1.csv").write_bytes(ROWS)
    cache = tmp_path / "cache.json"
    first = source_id(folder, vault, cache)
    (folder / "part-2.csv").write_bytes(b"id,age\nP-3,33\n")
    assert source_id(folder, vault, cache) != first


def test_a_cut_cache_is_only_a_miss(source, vault, tmp_path):
    cache = tmp_path / "cache.json"
    first = source_id(source, vault, cache)
    cache.write_text('{"stat": ')
    assert source_id(source, vault, cache) == first


def _project(tmp_path, datasets: dict) -> Path:
    """A project whose params.yaml is this repository's, with `datasets` declared instead."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"] = {name: {**entry, "schema": "schemas/test.yaml"} for name, entry in datasets.items()}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def test_one_taking_writes_every_datasets_fingerprint_and_rewrites_only_a_changed_one(source, vault, tmp_path):
    other = tmp_path / "other.csv"
    other.write_bytes(b"id,age\nQ-1,33\n")
    # "other.csv": a relative source is the project's
    project = _project(tmp_path, {"d": {"source": str(source)}, "e": {"source": "other.csv"}})
    folder = tmp_path / "artifacts" / "fingerprints"
    assert take_fingerprints(project, folder, vault) == {"d": "changed", "e": "changed"}
    assert read_fingerprint(folder / "d.json") == {"dataset": "d", "snapshot_id": source_id(source, vault)}
    assert read_fingerprint(folder / "e.json") == {"dataset": "e", "snapshot_id": source_id(other, vault)}
    before = {path.name: (path.stat().st_mtime_ns, path.stat().st_ino) for path in folder.iterdir()}
    other.write_bytes(b"id,age\nQ-1,34\n")
    assert take_fingerprints(project, folder, vault) == {"d": "unchanged", "e": "changed"}
    d = folder / "d.json"
    assert (d.stat().st_mtime_ns, d.stat().st_ino) == before["d.json"]  # left alone: DVC need not hash it again
    assert read_fingerprint(folder / "e.json")["snapshot_id"] == source_id(other, vault)


def test_a_source_that_cannot_be_read_is_said_in_its_fingerprint_and_stops_no_other(source, vault, tmp_path):
    project = _project(tmp_path, {"d": {"source": str(source)}, "gone": {"source": "nowhere/export.csv"}})
    folder = tmp_path / "artifacts" / "fingerprints"
    news = take_fingerprints(project, folder, vault)
    assert news["d"] == "changed" and news["gone"].startswith("unavailable: ") and "source not found" in news["gone"]
    said = read_fingerprint(folder / "gone.json")
    assert set(said) == {"dataset", "unavailable"} and "nowhere/export.csv" in said["unavailable"]
    assert read_fingerprint(folder / "d.json")["snapshot_id"] == source_id(source, vault)


def test_a_dataset_no_longer_declared_loses_its_fingerprint(source, vault, tmp_path):
    folder = tmp_path / "artifacts" / "fingerprints"
    take_fingerprints(_project(tmp_path, {"d": {"source": str(source)}, "old": {"source": str(source)}}), folder, vault)
    (folder / "d.json.partial").write_text("{")  # a killed write's leftover
    take_fingerprints(_project(tmp_path, {"d": {"source": str(source)}}), folder, vault)
    assert sorted(path.name for path in folder.iterdir() if path.is_file()) == ["d.json"]
    assert [path.name for path in (folder / "train").iterdir()] == ["d.json"]  # what train reads, likewise


def test_ingest_refuses_bytes_that_are_not_the_fingerprinted_ones(source, vault, tmp_path):
    taken = source_id(source, vault)
    source.write_bytes(ROWS + b"P-3,19\n")  # the export grew between the two stages
    settings = IngestSettings(source=source, log=tmp_path / "log")
    with pytest.raises(DatasetError, match=r"export.csv: its bytes are not the ones its fingerprint was taken of.*"
                                           r"privflow run -d d"):
        ingest_snapshot("d", settings, vault, tmp_path / "ingest", expected_id=taken)
    assert not (tmp_path / "ingest").exists()  # nothing sealed, no manifest


def test_dvc_sees_the_source_only_through_the_fingerprint():
    """In dvc.yaml the fingerprint stage has no data dep (DVC would record its MD5 and size in
    dvc.lock) and DVC runs it every time, once for every dataset; each ingest depends on its
    dataset's file in the stage's output, not on the source."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    taken, ingest = stages["fingerprint"], stages["ingest"]["do"]
    assert "foreach" not in taken and taken["always_changed"] is True and "params" not in taken
    assert [d for d in taken["deps"] if not d.startswith("${privflow_code}/")] == []
    assert taken["outs"] == [{"artifacts/fingerprints": {"cache": False, "persist": True}}]
    assert "--dataset" not in taken["cmd"]
    assert "artifacts/fingerprints/${key}.json" in ingest["deps"]
    assert not any("${item.source}" in str(d) for stage in stages.values() for d in stage.get("do", stage)["deps"])
    assert [name for name, spec in SPECS.items() if spec.always_changed] == ["fingerprint"]
    assert stage_entry("ingest")["deps"][0] == "artifacts/fingerprints/${key}.json"


def test_only_the_fingerprint_stage_runs_every_time():
    assert runs_every_time("fingerprint") and not runs_every_time("ingest@churn")
    assert not runs_every_time("no-such-stage@churn")


def test_two_takings_at_once_take_turns(source, vault, tmp_path):
    """Two `privflow run`s planning at once wrote the same files, and one failed (its `.partial`
    moved away under it). While one taking holds the project's lock, another waits, then completes."""
    import threading

    project = _project(tmp_path, {"d": {"source": str(source)}})
    folder = tmp_path / "fingerprints"
    taken = []
    with fingerprint.one_taking_at_a_time(project):
        other = threading.Thread(target=lambda: taken.append(take_fingerprints(project, folder, vault)))
        other.start()
        other.join(timeout=1.0)
        assert other.is_alive() and not fingerprint.fingerprint_file(folder, "d").exists()  # it waits its turn
    other.join(timeout=60)
    assert taken == [{"d": "changed"}] and read_fingerprint(fingerprint.fingerprint_file(folder, "d"))["snapshot_id"]


WRITER = """
import sys, time
from pathlib import Path
from privflow.artifacts import write_json
path, name = Path(sys.argv[1]), sys.argv[2]
path.with_name("ready-" + name).touch()
while not path.with_name("go").exists():  # both writers imported: their writes overlap
    time.sleep(0.005)
for i in range(100):
    write_json(path, {"writer": name, "i": i, "padding": "x" * 4096})
"""


def test_two_writers_of_one_json_file_never_take_each_others_partial(tmp_path):
    """The root of the race above: writers of one file shared a `.partial` name, so one could
    move the other's away (a FileNotFoundError) or publish it. Each writes its own, unnamed
    until whole, and the file is always one writer's whole document; nothing is left beside it."""
    import subprocess
    import sys
    import time

    folder = tmp_path / "fingerprints"
    folder.mkdir()
    path = folder / "d.json"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), name], stderr=subprocess.PIPE, text=True)
               for name in ("a", "b")]
    while not all((folder / f"ready-{name}").exists() for name in "ab") and all(w.poll() is None for w in writers):
        time.sleep(0.01)
    (folder / "go").touch()
    seen = set()
    while any(writer.poll() is None for writer in writers):
        if path.exists():
            seen.add(json.loads(path.read_text())["writer"])  # never half a file
    assert [writer.wait() for writer in writers] == [0, 0], [writer.stderr.read() for writer in writers]
    assert json.loads(path.read_text())["i"] == 99 and seen <= {"a", "b"}
    assert sorted(p.name for p in folder.iterdir()) == ["d.json", "go", "ready-a", "ready-b"]
