"""A source's fingerprint: the keyed id through which alone DVC sees the source (dvc.lock never
holds a digest of the private bytes), cheap to take again when no file changed."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import yaml

from privflow.crypto.keys import Keyring
from privflow.crypto.vault import Vault
from privflow.data import fingerprint
from privflow.data.fingerprint import read_fingerprint, refresh_fingerprint, source_id, write_fingerprint
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


def test_writing_the_same_fingerprint_leaves_the_file_alone(source, vault, tmp_path):
    out = tmp_path / "artifacts" / "d" / "fingerprint.json"
    assert refresh_fingerprint("d", source, vault, out, tmp_path) == (source_id(source, vault), True)
    before = out.stat().st_mtime_ns, out.stat().st_ino
    assert refresh_fingerprint("d", source, vault, out, tmp_path) == (source_id(source, vault), False)
    assert (out.stat().st_mtime_ns, out.stat().st_ino) == before  # DVC need not hash it again
    assert read_fingerprint(out) == {"dataset": "d", "snapshot_id": source_id(source, vault)}
    assert write_fingerprint(out, "d", "hmac-sha256:other") is True


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
    dvc.lock) and DVC runs it every time; ingest depends on its output, not on the source."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    taken, ingest = stages["fingerprint"]["do"], stages["ingest"]["do"]
    assert taken["always_changed"] is True
    assert [d for d in taken["deps"] if not d.startswith("${privflow_code}/")] == []
    assert taken["outs"] == [{"artifacts/${key}/fingerprint.json": {"cache": False, "persist": True}}]
    assert "artifacts/${key}/fingerprint.json" in ingest["deps"]
    assert not any("${item.source}" in str(d) for stage in stages.values() for d in stage["do"]["deps"])
    assert [name for name, spec in SPECS.items() if spec.always_changed] == ["fingerprint"]
    assert stage_entry("ingest")["deps"][0] == "artifacts/${key}/fingerprint.json"


def test_only_the_fingerprint_stage_runs_every_time():
    assert runs_every_time("fingerprint@churn") and not runs_every_time("ingest@churn")
    assert not runs_every_time("no-such-stage@churn")
