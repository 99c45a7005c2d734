"""Keys: key-encryption keys (KEKs) and the per-dataset data keys they wrap.

Hierarchy: a KEK (local file, or a cloud KMS / HashiCorp Vault behind `KeyWrapper`) wraps
a random 256-bit data key per dataset (RFC 3394 AES key wrap). The vault derives one key
per artifact from the dataset key and the artifact's identity (HKDF). Wrapped data keys
live in the keyring file, never in artifacts, so rotating a KEK re-wraps a few dataset
keys and changes no byte that DVC tracks.

The keyring file is created 0600 and refused when group or world can read it.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from privflow.crypto.files import replacing
from privflow.errors import KeyringError

KeyState = Literal["primary", "decrypt-only", "retired"]


@dataclass(frozen=True)
class WrappedKey:
    kek_id: str
    wrapped: bytes


class KeyWrapper(Protocol):
    """A KEK service: wrap under the current primary KEK, unwrap under the KEK named.

    A KMS backend implements these two calls against the service (e.g. AWS KMS Encrypt and
    Decrypt, Vault transit encrypt/decrypt) and is passed to `Keyring(..., wrapper=...)`.
    """

    def wrap(self, data_key: bytes) -> WrappedKey: ...

    def unwrap(self, wrapped: WrappedKey) -> bytes: ...


@dataclass
class Kek:
    kek_id: str
    created: str
    state: KeyState
    material: bytes | None = field(repr=False)  # None once retired: crypto-shredded


@dataclass(frozen=True)
class DatasetKey:
    key_id: str
    dataset: str
    created: str
    wrapped: WrappedKey


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _new_id(prefix: str) -> str:
    return f"{prefix}-{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(4)}"


class LocalKeks:
    """KEKs kept in the keyring file itself: the embedded default."""

    def __init__(self, keks: list[Kek]):
        self.keks = {k.kek_id: k for k in keks}

    def primary(self) -> Kek:
        primaries = [k for k in self.keks.values() if k.state == "primary"]
        if len(primaries) != 1:
            raise KeyringError(f"expected exactly one primary KEK, found {len(primaries)}")
        return primaries[0]

    def wrap(self, data_key: bytes) -> WrappedKey:
        kek = self.primary()
        return WrappedKey(kek.kek_id, aes_key_wrap(kek.material, data_key))

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        kek = self.keks.get(wrapped.kek_id)
        if kek is None or kek.material is None:
            state = "retired" if kek else "not in this keyring"
            raise KeyringError(f"KEK {wrapped.kek_id} is {state}; point PRIVFLOW_KEYRING at the "
                               "keyring that sealed this data")
        try:
            return aes_key_unwrap(kek.material, wrapped.wrapped)
        except InvalidUnwrap:
            raise KeyringError(f"a data key wrapped under {wrapped.kek_id} failed to unwrap") from None

    def rotate(self) -> Kek:
        for kek in self.keks.values():
            if kek.state == "primary":
                kek.state = "decrypt-only"
        new = Kek(_new_id("kek"), _now(), "primary", os.urandom(32))
        self.keks[new.kek_id] = new
        return new


class Keyring:
    def __init__(self, path: Path, keks: LocalKeks, dataset_keys: list[DatasetKey]):
        self.path = path
        self.keks = keks
        self.dataset_keys = {k.key_id: k for k in dataset_keys}

    @classmethod
    def open(cls, path: Path, *, create: bool = True) -> Keyring:
        if not path.exists():
            if not create:
                raise KeyringError(f"{path}: no keyring; create one with `privflow keys init`")
            keyring = cls(path, LocalKeks([Kek(_new_id("kek"), _now(), "primary", os.urandom(32))]), [])
            keyring.save()
            return keyring
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise KeyringError(f"{path}: keyring is readable by group or others (mode {mode:o}); "
                               f"run `chmod 600 {path}` and check who may have copied it")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise KeyringError(f"{path}: keyring file is corrupt or not a privflow keyring") from None
        if isinstance(doc, dict) and doc.get("version") != 2:
            raise KeyringError(f"{path}: keyring format {doc.get('version')!r}; this privflow reads format 2. "
                               "Move it aside and re-run: data sealed under it cannot be opened by this version")
        try:
            keks = [Kek(k["id"], k["created"], k["state"],
                        base64.b64decode(k["material"]) if k["material"] else None) for k in doc["keks"]]
            dataset_keys = [DatasetKey(d["id"], d["dataset"], d["created"],
                                       WrappedKey(d["kek_id"], base64.b64decode(d["wrapped"])))
                            for d in doc["dataset_keys"]]
        except (ValueError, KeyError, TypeError):
            raise KeyringError(f"{path}: keyring file is corrupt or not a privflow keyring") from None
        return cls(path, LocalKeks(keks), dataset_keys)

    def save(self) -> None:
        doc = {
            "version": 2,
            "keks": [{"id": k.kek_id, "created": k.created, "state": k.state,
                      "material": base64.b64encode(k.material).decode() if k.material else None}
                     for k in self.keks.keks.values()],
            "dataset_keys": [{"id": d.key_id, "dataset": d.dataset, "created": d.created,
                              "kek_id": d.wrapped.kek_id, "wrapped": base64.b64encode(d.wrapped.wrapped).decode()}
                             for d in self.dataset_keys.values()],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with replacing(self.path, mode=0o600) as handle:  # never readable by others
            handle.write(json.dumps(doc, indent=1).encode("utf-8"))

    @contextmanager
    def exclusive(self) -> Iterator[Keyring]:
        """The keyring as now on disk, locked against other processes' changes."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield Keyring.open(self.path)

    def _find(self, dataset: str) -> DatasetKey | None:
        return next((e for e in self.dataset_keys.values() if e.dataset == dataset), None)

    def dataset_key(self, dataset: str) -> tuple[str, bytes]:
        """(key id, key) of the dataset's data key, created and saved on first use."""
        entry = self._find(dataset)
        if entry is None:
            with self.exclusive() as current:  # two stages must not both create one
                entry = current._find(dataset)
                if entry is None:
                    entry = DatasetKey(_new_id(f"dk-{dataset}"), dataset, _now(), current.keks.wrap(os.urandom(32)))
                    current.dataset_keys[entry.key_id] = entry
                    current.save()
                self.keks, self.dataset_keys = current.keks, current.dataset_keys
        return entry.key_id, self.keks.unwrap(entry.wrapped)

    def key_by_id(self, key_id: str) -> bytes:
        entry = self.dataset_keys.get(key_id)
        if entry is None:
            raise KeyringError(f"{self.path}: data key {key_id} is not in this keyring; point "
                               "PRIVFLOW_KEYRING at the keyring that sealed the artifact")
        return self.keks.unwrap(entry.wrapped)

    def rotate(self) -> str:
        """New primary KEK; every dataset key re-wrapped under it; old KEKs decrypt-only."""
        material = {key_id: self.key_by_id(key_id) for key_id in self.dataset_keys}
        new = self.keks.rotate()
        for key_id, entry in list(self.dataset_keys.items()):
            self.dataset_keys[key_id] = DatasetKey(key_id, entry.dataset, entry.created,
                                                   self.keks.wrap(material[key_id]))
        self.save()
        return new.kek_id

    def retire(self, kek_id: str) -> None:
        """Destroy a KEK's material; refused while it is primary or still wraps a data key."""
        kek = self.keks.keks.get(kek_id)
        if kek is None:
            raise KeyringError(f"no KEK {kek_id} in {self.path}")
        users = [d.key_id for d in self.dataset_keys.values() if d.wrapped.kek_id == kek_id]
        if kek.state == "primary" or users:
            raise KeyringError(f"KEK {kek_id} is still in use ({kek.state}; wraps {users or 'no data keys'}); "
                               "run `privflow keys rotate` first")
        kek.state, kek.material = "retired", None
        self.save()
