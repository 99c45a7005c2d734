"""The only code that turns sensitive bytes into ciphertext and back.

Format v3: MAGIC | u32 header length | header JSON | chunk* , chunk = nonce(12) | ct | tag(16).
The header names the dataset key id, the chunk size and the artifact's identity. Per
artifact, HKDF derives an encryption key and a nonce key from the dataset key and the
identity. Each chunk is AES-256-GCM with a synthetic nonce, BLAKE3-keyed(index, final flag,
chunk) truncated to 96 bits, and associated data SHA-256(header) | index | final flag.
Every v3 chunk's plaintext is a whole chunk (data length, data, zeros) and the chunk count is
padded, so a sealed file's size shows only its bucket, not its plaintext's length
(privflow.crypto.chunks says why). v2 files (no framing, exact sizes) are still read.

Why synthetic nonces: encryption is deterministic, so sealing unchanged plaintext again
(a forced re-run, a rotation) yields the same bytes and the same DVC hash, and training is
not re-run. Nonces stay unique per distinct chunk under a key (a PRF collision is a
2^-96 event per pair), which is what GCM needs. The price: someone holding two versions of
the same artifact identity learns which chunks are equal; and a BLAKE3 pass (about 6 GiB/s
here) before AES-GCM (about 8.6 GiB/s).

What fails authentication: any flipped bit; a chunk moved, dropped, duplicated or taken from
another artifact; a missing final chunk (truncation); bytes after it; a header moved onto
another body. Opening under the wrong identity (train for test, an old snapshot for the
current one) is refused before any decryption.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from blake3 import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privflow.crypto.chunks import DATA_LENGTH, file_chunks, fixed_chunks, framed, unframed
from privflow.crypto.files import replacing
from privflow.errors import IntegrityError

MAGIC = b"PFVAULT2"
ALGORITHM = "AES-256-GCM/BLAKE3-SIV-STREAM"
CHUNK_SIZE = 1 << 20
NONCE_SIZE = 12
TAG_SIZE = 16
_LEN = struct.Struct(">I")
_POSITION = struct.Struct(">IB")  # chunk index, final flag
_MAX_HEADER = 1 << 16
VERSION, READABLE = 3, (2, 3)


@dataclass(frozen=True)
class ArtifactIdentity:
    """What an artifact is; bound into its ciphertext so it cannot pose as another."""

    dataset: str
    stage: str
    name: str
    upstream: str  # hash of what it was derived from (the snapshot id)

    def canonical(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()


SNAPSHOT_IDS = "@snapshot-ids"  # the keyring's key for snapshot ids: "@" is in no dataset's name


@dataclass(frozen=True)
class SealedArtifact:
    path: Path
    key_id: str
    plaintext_bytes: int


class DataKeys(Protocol):
    def dataset_key(self, dataset: str) -> tuple[str, bytes]: ...

    def key_by_id(self, key_id: str) -> bytes: ...


def gcm_seal_into(aead: AESGCM, nonce: bytes, chunk: memoryview, aad: bytes, out: memoryview) -> None:
    """Write nonce | ciphertext | tag into `out`, which is exactly len(chunk) + 28 bytes."""
    out[:NONCE_SIZE] = nonce
    aead.encrypt_into(nonce, chunk, aad, out[NONCE_SIZE:])


def gcm_open(aead: AESGCM, block: bytes | memoryview, aad: bytes) -> bytes:
    """Inverse of gcm_seal_into; InvalidTag (or ValueError for a short block) on any change."""
    return aead.decrypt(block[:NONCE_SIZE], block[NONCE_SIZE:], aad)


class _ChunkCipher:
    """AES-256-GCM under one artifact's derived keys, with synthetic nonces."""

    def __init__(self, dataset_key: bytes, identity: ArtifactIdentity, header: bytes, version: int = VERSION):
        derived = HKDF(hashes.SHA256(), 64, salt=None,
                       info=f"privflow vault v{version}\x00".encode() + identity.canonical()).derive(dataset_key)
        self.aead = AESGCM(derived[:32])
        self.nonce_key = derived[32:]
        self.header_digest = hashlib.sha256(MAGIC + header).digest()

    def aad(self, index: int, final: bool) -> bytes:
        return self.header_digest + _POSITION.pack(index, final)

    def seal(self, index: int, final: bool, chunk: memoryview, out: memoryview) -> None:
        """Write nonce | ciphertext | tag of `chunk` into `out` (len(chunk) + 28 bytes)."""
        position = _POSITION.pack(index, final)
        nonce = blake3(position, key=self.nonce_key).update(chunk).digest(NONCE_SIZE)
        gcm_seal_into(self.aead, nonce, chunk, self.header_digest + position, out)

    def open(self, index: int, final: bool, block: memoryview) -> bytes:
        return gcm_open(self.aead, block, self.aad(index, final))


def _header(key_id: str, chunk_size: int, identity: ArtifactIdentity) -> bytes:
    return json.dumps({"v": VERSION, "alg": ALGORITHM, "key_id": key_id, "chunk_size": chunk_size,
                       "identity": asdict(identity)}, sort_keys=True).encode()


class Vault:
    def __init__(self, keys: DataKeys, chunk_size: int = CHUNK_SIZE):
        self._keys = keys
        self._chunk_size = chunk_size

    def seal(self, data: bytes, identity: ArtifactIdentity, dest: Path) -> SealedArtifact:
        return self._write(fixed_chunks([data], self._data_size), identity, dest)

    def seal_stream(self, pieces: Iterable[bytes], identity: ArtifactIdentity, dest: Path) -> SealedArtifact:
        return self._write(fixed_chunks(pieces, self._data_size), identity, dest)

    def seal_file(self, source: Path, identity: ArtifactIdentity, dest: Path) -> SealedArtifact:
        with open(source, "rb") as handle:
            return self._write(file_chunks(handle, self._data_size), identity, dest)

    @property
    def _data_size(self) -> int:  # a chunk's data: what its frame leaves
        return self._chunk_size - DATA_LENGTH.size

    def _write(self, chunks: Iterator[tuple[memoryview, bool]], identity: ArtifactIdentity,
               dest: Path) -> SealedArtifact:
        """Encrypt to dest atomically: dest appears complete or not at all."""
        key_id, dataset_key = self._keys.dataset_key(identity.dataset)
        header = _header(key_id, self._chunk_size, identity)
        cipher = _ChunkCipher(dataset_key, identity, header)
        out = bytearray(NONCE_SIZE + self._chunk_size + TAG_SIZE)
        dest.parent.mkdir(parents=True, exist_ok=True)
        total = 0

        def counted() -> Iterator[tuple[memoryview, bool]]:
            nonlocal total
            for chunk, final in chunks:
                total += len(chunk)
                yield chunk, final

        with replacing(dest) as handle:
            handle.write(MAGIC + _LEN.pack(len(header)) + header)
            for index, (chunk, final) in enumerate(framed(counted(), self._chunk_size)):
                cipher.seal(index, final, chunk, memoryview(out))
                handle.write(out)
        return SealedArtifact(dest, key_id, total)

    @property
    def keys(self) -> DataKeys:
        return self._keys

    def snapshot_id(self, content_digest: str) -> str:
        """A snapshot's published id: HMAC-SHA256 of its content digest under the keyring's
        snapshot-id key. A bare digest of private data lets whoever knows every other record
        (the adversary DP is defined against) test guesses of the last one against the id
        in reports and metrics; keyed, only a key holder can. One key for every dataset, so
        the same data keeps one id under any name (how the ledger sees a renamed budget)."""
        _, key = self._keys.dataset_key(SNAPSHOT_IDS)
        return "hmac-sha256:" + hmac.new(key, content_digest.encode(), hashlib.sha256).hexdigest()

    def open(self, src: Path, identity: ArtifactIdentity) -> bytes:
        return b"".join(self.open_stream(src, identity))

    def authenticate(self, src: Path, identity: ArtifactIdentity) -> int:
        """Check identity and every tag of a sealed file without keeping its plaintext (each
        chunk is dropped as soon as its tag verifies); returns the plaintext size. Lets a
        stage refuse a tampered input before it commits to anything, such as a charge."""
        if not src.is_file():
            raise IntegrityError(f"{src}: missing; run `dvc checkout` or the stage that writes it again")
        return sum(len(chunk) for chunk in self.open_stream(src, identity))

    def open_stream(self, src: Path, identity: ArtifactIdentity) -> Iterator[bytes]:
        """Yield authenticated plaintext chunks; raise IntegrityError on any tampering."""
        with open(src, "rb") as handle:
            header, meta = _read_header(handle, src)
            if meta["identity"] != asdict(identity):
                raise IntegrityError(
                    f"{src}: sealed as {meta['identity']}, expected {asdict(identity)}; "
                    "an artifact was swapped or is stale: re-run the stage that produces it")
            version, size = meta["v"], meta["chunk_size"]
            cipher = _ChunkCipher(self._keys.key_by_id(meta["key_id"]), identity, header, version)
            for index, (block, final) in enumerate(file_chunks(handle, NONCE_SIZE + size + TAG_SIZE)):
                try:
                    plaintext = cipher.open(index, final, block)
                except (InvalidTag, ValueError):
                    raise IntegrityError(
                        f"{src}: chunk {index} failed authentication: the file was modified, truncated, "
                        "extended or reordered; restore it (`dvc checkout`) or re-run its stage") from None
                data = plaintext if version == 2 else unframed(plaintext, size)
                if data is None:
                    raise IntegrityError(f"{src}: chunk {index} is not a whole frame; re-run its stage")
                yield data


def read_header(src: Path) -> dict:
    """The parsed (unauthenticated) header of a sealed artifact: key id, identity, sizes."""
    with open(src, "rb") as handle:
        return _read_header(handle, src)[1]


def _read_header(handle: BinaryIO, src: Path) -> tuple[bytes, dict]:
    start = handle.read(len(MAGIC) + _LEN.size)
    if len(start) < len(MAGIC) + _LEN.size or not start.startswith(MAGIC):
        raise IntegrityError(f"{src}: not a privflow sealed artifact (bad magic or old format)")
    (length,) = _LEN.unpack(start[len(MAGIC):])
    header = handle.read(length) if length <= _MAX_HEADER else b""
    try:
        meta = json.loads(header)
        valid = (meta["v"] in READABLE and meta["alg"] == ALGORITHM and isinstance(meta["key_id"], str)
                 and isinstance(meta["chunk_size"], int) and meta["chunk_size"] > 0
                 and isinstance(meta["identity"], dict))
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise IntegrityError(f"{src}: header is corrupt or of an unknown version")
    return header, meta
