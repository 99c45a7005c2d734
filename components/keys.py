"""Key-encryption keys (KEKs): the local keyring and the wrapping interface.

Data keys are never stored in the clear: each sealed artifact carries its own data key,
wrapped (RFC 3394 AES key wrap) under a KEK named by id. A team that keeps KEKs in a cloud
KMS or HashiCorp Vault implements `KeyWrapper` against that service; the vault code only
ever calls `wrap` and `unwrap`.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from components.errors import KeyringError

KeyState = Literal["primary", "decrypt-only", "retired"]


@dataclass(frozen=True)
class WrappedKey:
    key_id: str
    wrapped: bytes


class KeyWrapper(Protocol):
    """What the vault needs from a key service: wrap under the primary, unwrap by id."""

    def wrap(self, data_key: bytes) -> WrappedKey: ...

    def unwrap(self, wrapped: WrappedKey) -> bytes: ...


@dataclass(frozen=True)
class KeyEncryptionKey:
    key_id: str
    created: str
    state: KeyState
    material: bytes = field(repr=False)


def _new_kek(state: KeyState = "primary") -> KeyEncryptionKey:
    now = datetime.now(UTC)
    key_id = f"kek-{now:%Y%m%d}-{secrets.token_hex(4)}"
    return KeyEncryptionKey(key_id, now.isoformat(timespec="seconds"), state, os.urandom(32))


class LocalKeyring:
    """A JSON file of KEKs, mode 0600, outside the repository by default."""

    def __init__(self, path: Path, keys: list[KeyEncryptionKey]):
        self.path = path
        self._keys = {k.key_id: k for k in keys}

    @classmethod
    def open(cls, path: Path, *, create: bool = True) -> LocalKeyring:
        if not path.exists():
            if not create:
                raise KeyringError(f"{path}: no keyring; create one with `privflow keys init`")
            keyring = cls(path, [_new_kek()])
            keyring.save(new=True)
            return keyring
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise KeyringError(
                f"{path}: keyring is readable by group or others (mode {mode:o}); "
                f"run `chmod 600 {path}` and check who may have copied it"
            )
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            keys = [
                KeyEncryptionKey(k["id"], k["created"], k["state"], base64.b64decode(k["material"]))
                for k in doc["keys"]
            ]
        except (ValueError, KeyError, TypeError):
            raise KeyringError(f"{path}: keyring file is corrupt or not a privflow keyring") from None
        return cls(path, keys)

    def save(self, *, new: bool = False) -> None:
        doc = {
            "version": 1,
            "keys": [
                {"id": k.key_id, "created": k.created, "state": k.state,
                 "material": base64.b64encode(k.material).decode()}
                for k in self._keys.values()
            ],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = self.path.with_name(self.path.name + ".partial")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        fd = os.open(partial, flags, 0o600)  # created 0600: never world-readable, not even briefly
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(doc, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if new and self.path.exists():
            raise KeyringError(f"{self.path}: refusing to overwrite an existing keyring")
        os.replace(partial, self.path)

    def keys(self) -> list[KeyEncryptionKey]:
        return list(self._keys.values())

    def primary(self) -> KeyEncryptionKey:
        primaries = [k for k in self._keys.values() if k.state == "primary"]
        if len(primaries) != 1:
            raise KeyringError(f"{self.path}: expected exactly one primary key, found {len(primaries)}")
        return primaries[0]

    def wrap(self, data_key: bytes) -> WrappedKey:
        kek = self.primary()
        return WrappedKey(kek.key_id, aes_key_wrap(kek.material, data_key))

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        kek = self._keys.get(wrapped.key_id)
        if kek is None:
            raise KeyringError(
                f"{self.path}: key {wrapped.key_id} is not in this keyring; "
                "point PRIVFLOW_KEYRING at the keyring that sealed the artifact"
            )
        if kek.state == "retired":
            raise KeyringError(f"key {wrapped.key_id} is retired; data sealed under it must be re-wrapped first")
        try:
            return aes_key_unwrap(kek.material, wrapped.wrapped)
        except InvalidUnwrap:
            raise KeyringError(f"data key wrapped under {wrapped.key_id} failed to unwrap") from None
