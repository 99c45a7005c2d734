import os
import stat

import pytest

from components.errors import KeyringError
from components.keys import LocalKeyring, WrappedKey


def test_keyring_is_created_private(tmp_path):
    keyring = LocalKeyring.open(tmp_path / "k" / "keyring.json")
    assert stat.S_IMODE(os.stat(keyring.path).st_mode) == 0o600
    assert keyring.primary().state == "primary"
    assert "material" not in repr(keyring.primary())


def test_group_readable_keyring_is_refused(tmp_path):
    keyring = LocalKeyring.open(tmp_path / "keyring.json")
    os.chmod(keyring.path, 0o640)
    with pytest.raises(KeyringError, match="chmod 600"):
        LocalKeyring.open(keyring.path)


def test_missing_keyring_without_create(tmp_path):
    with pytest.raises(KeyringError, match="privflow keys init"):
        LocalKeyring.open(tmp_path / "none.json", create=False)


def test_wrap_unwrap_and_tampered_wrapped_key(tmp_path):
    keyring = LocalKeyring.open(tmp_path / "keyring.json")
    wrapped = keyring.wrap(b"\x01" * 32)
    assert keyring.unwrap(wrapped) == b"\x01" * 32
    reopened = LocalKeyring.open(keyring.path)
    assert reopened.unwrap(wrapped) == b"\x01" * 32
    broken = WrappedKey(wrapped.key_id, bytes([wrapped.wrapped[0] ^ 1]) + wrapped.wrapped[1:])
    with pytest.raises(KeyringError, match="failed to unwrap"):
        keyring.unwrap(broken)


def test_corrupt_keyring(tmp_path):
    path = tmp_path / "keyring.json"
    path.write_text("{not json")
    os.chmod(path, 0o600)
    with pytest.raises(KeyringError, match="corrupt"):
        LocalKeyring.open(path)
