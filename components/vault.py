"""The only code that turns sensitive bytes into ciphertext and back.

Format (v1): MAGIC | u32 header length | header JSON | chunk* .
The header names the KEK id, the wrapped per-artifact data key, a random nonce prefix, the
chunk size and the artifact's identity. Each chunk is AES-256-GCM under the data key with
nonce = prefix(7) || chunk index (u32) || final flag (u8) -- the STREAM construction
(Hoang, Reyhanitabar, Rogaway, Vizar 2015) -- and associated data = SHA-256 of the header.
So a flipped header bit, a reordered, spliced, dropped or appended chunk, or a header moved
onto another body all fail authentication, and opening an artifact under the wrong
identity (train for test, an old snapshot for the current one) is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from components.errors import IntegrityError
from components.keys import KeyWrapper, WrappedKey

MAGIC = b"PFVAULT1"
CHUNK_SIZE = 1 << 20
TAG_SIZE = 16
_LEN = struct.Struct(">I")
_MAX_HEADER = 1 << 16


@dataclass(frozen=True)
class ArtifactIdentity:
    """What an artifact is; bound into its ciphertext so it cannot pose as another."""

    dataset: str
    stage: str
    name: str
    upstream: str  # hash of what it was derived from (the snapshot id)


@dataclass(frozen=True)
class SealedArtifact:
    path: Path
    key_id: str
    ciphertext_sha256: str
    plaintext_bytes: int


def _nonce(prefix: bytes, index: int, final: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if final else 0)


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, max(len(view), 1), size):
        yield bytes(view[start : start + size])


class Vault:
    def __init__(self, keys: KeyWrapper, chunk_size: int = CHUNK_SIZE):
        self._keys = keys
        self._chunk_size = chunk_size

    def seal(self, data: bytes, identity: ArtifactIdentity, dest: Path) -> SealedArtifact:
        return self.seal_stream(_chunks(data, self._chunk_size), identity, dest)

    def seal_stream(
        self, pieces: Iterable[bytes], identity: ArtifactIdentity, dest: Path
    ) -> SealedArtifact:
        """Encrypt pieces (any sizes) to dest atomically: dest appears complete or not at all."""
        data_key = AESGCM.generate_key(bit_length=256)
        wrapped = self._keys.wrap(data_key)
        header = json.dumps(
            {
                "v": 1,
                "alg": "AES-256-GCM-STREAM",
                "key_id": wrapped.key_id,
                "wrapped_key": wrapped.wrapped.hex(),
                "nonce_prefix": os.urandom(7).hex(),
                "chunk_size": self._chunk_size,
                "identity": asdict(identity),
            },
            sort_keys=True,
        ).encode()
        prefix = bytes.fromhex(json.loads(header)["nonce_prefix"])
        aad = hashlib.sha256(MAGIC + header).digest()
        aead = AESGCM(data_key)
        digest = hashlib.sha256()
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        total = 0
        with open(partial, "wb") as out:
            def emit(block: bytes) -> None:
                digest.update(block)
                out.write(block)

            emit(MAGIC + _LEN.pack(len(header)) + header)
            index = 0
            for chunk, final in _rechunk(pieces, self._chunk_size):
                emit(aead.encrypt(_nonce(prefix, index, final), chunk, aad))
                total += len(chunk)
                index += 1
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, dest)
        return SealedArtifact(dest, wrapped.key_id, digest.hexdigest(), total)

    def open(self, src: Path, identity: ArtifactIdentity) -> bytes:
        return b"".join(self.open_stream(src, identity))

    def open_stream(self, src: Path, identity: ArtifactIdentity) -> Iterator[bytes]:
        """Yield authenticated plaintext chunks; raise IntegrityError on any tampering."""
        with open(src, "rb") as handle:
            header, meta = _read_header(handle, src)
            if meta.identity != asdict(identity):
                raise IntegrityError(
                    f"{src}: sealed as {meta.identity}, expected {asdict(identity)}; "
                    "an artifact was swapped or is stale: re-run the stage that produces it"
                )
            aead = AESGCM(self._keys.unwrap(meta.wrapped))
            aad = hashlib.sha256(MAGIC + header).digest()
            yield from _decrypt_chunks(handle, aead, meta.nonce_prefix, aad, meta.chunk_size, src)


def _rechunk(pieces: Iterable[bytes], size: int) -> Iterator[tuple[bytes, bool]]:
    """Regroup arbitrary pieces into fixed-size chunks, flagging the last one."""
    buffer = bytearray()
    pending: bytes | None = None
    for piece in pieces:
        buffer += piece
        while len(buffer) > size:
            if pending is not None:
                yield pending, False
            pending = bytes(buffer[:size])
            del buffer[:size]
    if pending is not None and not buffer:
        yield pending, True
        return
    if pending is not None:
        yield pending, False
    yield bytes(buffer), True


@dataclass(frozen=True)
class _Header:
    wrapped: WrappedKey
    nonce_prefix: bytes
    chunk_size: int
    identity: dict


def _read_header(handle: BinaryIO, src: Path) -> tuple[bytes, _Header]:
    """The raw header bytes (authenticated later, chunk by chunk) and their parsed fields."""
    start = handle.read(len(MAGIC) + _LEN.size)
    if len(start) < len(MAGIC) + _LEN.size or not start.startswith(MAGIC):
        raise IntegrityError(f"{src}: not a privflow sealed artifact (bad magic)")
    (length,) = _LEN.unpack(start[len(MAGIC) :])
    header = handle.read(length) if length <= _MAX_HEADER else b""
    try:
        meta = json.loads(header)
        if meta["v"] != 1 or meta["alg"] != "AES-256-GCM-STREAM":
            raise ValueError("unknown version")
        parsed = _Header(WrappedKey(str(meta["key_id"]), bytes.fromhex(meta["wrapped_key"])),
                         bytes.fromhex(meta["nonce_prefix"]), int(meta["chunk_size"]), meta["identity"])
        if len(parsed.nonce_prefix) != 7 or parsed.chunk_size < 1:
            raise ValueError("bad field")
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"{src}: header is corrupt or of an unknown version") from None
    return header, parsed


def _decrypt_chunks(
    handle: BinaryIO, aead: AESGCM, prefix: bytes, aad: bytes, chunk_size: int, src: Path
) -> Iterator[bytes]:
    block_size = chunk_size + TAG_SIZE
    index = 0
    block = handle.read(block_size)
    while True:
        following = handle.read(block_size)
        final = not following
        try:
            yield aead.decrypt(_nonce(prefix, index, final), block, aad)
        except InvalidTag:
            raise IntegrityError(
                f"{src}: chunk {index} failed authentication: the file was modified, "
                "truncated, extended or reordered; restore it (`dvc checkout`) or re-run its stage"
            ) from None
        if final:
            return
        block, index = following, index + 1
