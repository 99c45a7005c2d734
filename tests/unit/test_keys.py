import json
import os
import stat

import pytest

from privflow.crypto.keys import Keyring, WrappedKey
from privflow.crypto.vault import ArtifactIdentity, Vault
from privflow.errors import KeyringError


def test_keyring_is_created_private(tmp_path):
    keyring = Keyring.open(tmp_path / "k" / "keyring.json")
    assert stat.S_IMODE(os.stat(keyring.path).st_mode) == 0o600
    assert keyring.keks.primary().state == "primary"
    assert "material" not in repr(keyring.keks.primary())


def test_group_readable_keyring_is_refused(tmp_path):
    keyring = Keyring.open(tmp_path / "keyring.json")
    os.chmod(keyring.path, 0o640)
    with pytest.raises(KeyringError, match="chmod 600"):
        Keyring.open(keyring.path)


def test_missing_and_corrupt_keyring(tmp_path):
    with pytest.raises(KeyringError, match="privflow keys init"):
        Keyring.open(tmp_path / "none.json", create=False)
    path = tmp_path / "keyring.json"
    path.write_text("{not json")
    os.chmod(path, 0o600)
    with pytest.raises(KeyringError, match="corrupt"):
        Keyring.open(path)


def test_dataset_key_is_stable_and_wrapped(tmp_path):
    keyring = Keyring.open(tmp_path / "keyring.json")
    key_id, key = keyring.dataset_key("demo")
    assert Keyring.open(keyring.path).dataset_key("demo") == (key_id, key)
    assert key.hex() not in keyring.path.read_text() and key_id in keyring.path.read_text()
    broken = WrappedKey(keyring.keks.primary().kek_id, b"\x00" * 40)
    with pytest.raises(KeyringError, match="failed to unwrap"):
        keyring.keks.unwrap(broken)


def test_rotate_rewrap_retire_cycle(tmp_path):
    keyring = Keyring.open(tmp_path / "keyring.json")
    identity = ArtifactIdentity("demo", "ingest", "snapshot.sealed", "sha256:x")
    artifact = tmp_path / "a.sealed"
    Vault(keyring).seal(b"rows", identity, artifact)
    sealed = artifact.read_bytes()
    old = keyring.keks.primary().kek_id
    with pytest.raises(KeyringError, match="still in use"):
        keyring.retire(old)  # primary
    new = keyring.rotate()
    assert keyring.keks.keks[old].state == "decrypt-only" and keyring.keks.primary().kek_id == new
    reopened = Keyring.open(keyring.path)
    assert {d.wrapped.kek_id for d in reopened.dataset_keys.values()} == {new}  # re-wrapped
    reopened.retire(old)
    doc = json.loads(keyring.path.read_text())
    assert [k["material"] for k in doc["keks"] if k["id"] == old] == [None]  # shredded
    after = Keyring.open(keyring.path)
    assert Vault(after).open(artifact, identity) == b"rows"  # data readable, never re-encrypted
    assert artifact.read_bytes() == sealed
    Vault(after).seal(b"rows", identity, tmp_path / "b.sealed")
    assert (tmp_path / "b.sealed").read_bytes() == sealed  # same bytes after rotation


def test_retire_refuses_a_kek_that_still_wraps_data(tmp_path):
    keyring = Keyring.open(tmp_path / "keyring.json")
    keyring.dataset_key("demo")
    old = keyring.keks.primary().kek_id
    keyring.keks.rotate()  # a new primary without re-wrapping: `old` still wraps the data key
    with pytest.raises(KeyringError, match="still in use"):
        keyring.retire(old)


def test_keyring_of_another_format_says_so(tmp_path):
    path = tmp_path / "keyring.json"
    path.write_text(json.dumps({"version": 1, "keys": []}))
    os.chmod(path, 0o600)
    with pytest.raises(KeyringError, match="keyring format 1; this privflow reads format 2. Move it aside"):
        Keyring.open(path)
