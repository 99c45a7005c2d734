"""What a dataset's source is: a CSV file (optionally gzip-compressed), a Parquet file, or a
folder holding files of those kinds (all of one dataset, read in name order).

A single file is snapshotted byte for byte; a folder becomes one deterministic tar of its
files (names sorted, no times or owners), so identical files give an identical snapshot.
Everything here streams: no source file is ever held in memory whole.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from privflow.errors import DatasetError

SUFFIXES = (".csv", ".csv.gz", ".parquet")
PIECE = 1 << 20

# A member of a source: the file's name and a binary stream of its bytes, read once, in order.
Member = tuple[str, BinaryIO]


def kind_of(name: str) -> str:
    return next(s for s in SUFFIXES if name.endswith(s))


def list_source(source: Path) -> list[Path]:
    """The files of a source, in name order; unknown kinds and missing sources are refused."""
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
        unknown = [p.name for p in paths if not p.name.endswith(SUFFIXES)]
        if unknown:
            raise DatasetError(f"{source}: files of unknown kind {unknown}; a dataset folder holds only "
                               f"{', '.join(SUFFIXES)} files")
        if not paths:
            raise DatasetError(f"{source}: folder holds no {', '.join(SUFFIXES)} files")
        return paths
    if not source.is_file():
        raise DatasetError(f"{source}: source not found; set the dataset's `source:` under `datasets:` in params.yaml")
    if not source.name.endswith(SUFFIXES):
        raise DatasetError(f"{source}: unknown kind of file; privflow reads {', '.join(SUFFIXES)}")
    return [source]


def combine_ids(digests: list[tuple[str, str]], is_folder: bool) -> str:
    """SHA-256 of a file's bytes; for a folder, of the (name, SHA-256) list of its files."""
    if not is_folder:
        return "sha256:" + digests[0][1]
    listing = "".join(f"{name}\0{digest}\n" for name, digest in digests)
    return "sha256:" + hashlib.sha256(listing.encode()).hexdigest()


def file_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def snapshot_id(paths: list[Path], is_folder: bool) -> str:
    return combine_ids([(p.name, file_digest(p)) for p in paths], is_folder)


class HashingReader(io.RawIOBase):
    """A read-once view of a binary stream that hashes every byte that passes through."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self._raw.readinto(buffer)
        self._hash.update(memoryview(buffer)[:count])
        return count

    def hexdigest(self) -> str:
        """The digest of the whole stream (whatever a consumer left unread is read first)."""
        while self.read(PIECE):
            pass
        return self._hash.hexdigest()


def _file_pieces(path: Path, hasher) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while piece := handle.read(PIECE):
            hasher.update(piece)
            yield piece


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o600
    return info


def pack_stream(paths: list[Path], is_folder: bool, expected_id: str) -> Iterator[bytes]:
    """The snapshot's bytes, piece by piece: the file itself, or a deterministic tar of the folder.

    The bytes are hashed again as they pass: a source that changed since its id was taken is
    refused (the caller's output is then never completed), never sealed under the wrong id.
    """
    digests, written = [], 0
    for path in paths:
        hasher = hashlib.sha256()
        if is_folder:
            header = _tar_info(path.name, path.stat().st_size).tobuf(tarfile.PAX_FORMAT)
            written += len(header)
            yield header
        size = 0
        for piece in _file_pieces(path, hasher):
            size += len(piece)
            yield piece
        if is_folder:
            padding = bytes(-size % tarfile.BLOCKSIZE)
            written += size + len(padding)
            yield padding
        digests.append((path.name, hasher.hexdigest()))
    if is_folder:  # end-of-archive: two zero blocks, padded to a whole record, as tarfile writes it
        written += 2 * tarfile.BLOCKSIZE
        yield bytes(2 * tarfile.BLOCKSIZE + -written % tarfile.RECORDSIZE)
    if combine_ids(digests, is_folder) != expected_id:
        raise DatasetError(f"{paths[0].parent if is_folder else paths[0]}: the source changed while it "
                           "was being ingested; wait until it is completely written, then re-run ingest")


def disk_members(paths: Iterable[Path]) -> Iterator[Member]:
    for path in paths:
        with open(path, "rb") as handle:
            yield path.name, handle


def snapshot_members(stream: BinaryIO, names: list[str], is_folder: bool) -> Iterator[Member]:
    """The files of a snapshot stream in order, each readable once, without extracting to disk."""
    if not is_folder:
        yield names[0], stream
        return
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for expected, member in zip(names, archive, strict=False):
            if member.name != expected:
                raise DatasetError(f"snapshot holds {member.name!r} where the manifest lists {expected!r}; "
                                   "re-run ingest")
            yield member.name, archive.extractfile(member)


class ChunkStream(io.RawIOBase):
    """A file-like view of an iterator of byte chunks (e.g. a vault's authenticated plaintext)."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count
