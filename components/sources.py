"""What a dataset's source is: a CSV file (optionally gzip-compressed), a Parquet file, or a
folder holding files of those kinds (all of one dataset, read in name order).

A single file is snapshotted byte for byte; a folder becomes one deterministic tar of its
files (names sorted, no times or owners), so identical files give an identical snapshot.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

from components.errors import DatasetError

SUFFIXES = (".csv", ".csv.gz", ".parquet")


@dataclass(frozen=True)
class SourceFile:
    name: str
    data: bytes = b""

    @property
    def kind(self) -> str:
        return next(s for s in SUFFIXES if self.name.endswith(s))


def _supported(name: str) -> bool:
    return name.endswith(SUFFIXES)


def read_source(source: Path) -> list[SourceFile]:
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
        unknown = [p.name for p in paths if not _supported(p.name)]
        if unknown:
            raise DatasetError(f"{source}: files of unknown kind {unknown}; a dataset folder holds only "
                               f"{', '.join(SUFFIXES)} files")
        if not paths:
            raise DatasetError(f"{source}: folder holds no {', '.join(SUFFIXES)} files")
        return [SourceFile(p.name, p.read_bytes()) for p in paths]
    if not source.is_file():
        raise DatasetError(f"{source}: source not found; set ingest.source in params.yaml")
    if not _supported(source.name):
        raise DatasetError(f"{source}: unknown kind of file; privflow reads {', '.join(SUFFIXES)}")
    return [SourceFile(source.name, source.read_bytes())]


def snapshot_id(files: list[SourceFile], is_folder: bool) -> str:
    """SHA-256 of a file's bytes; for a folder, of the (name, SHA-256) list of its files."""
    if not is_folder:
        return "sha256:" + hashlib.sha256(files[0].data).hexdigest()
    listing = "".join(f"{f.name}\0{hashlib.sha256(f.data).hexdigest()}\n" for f in files)
    return "sha256:" + hashlib.sha256(listing.encode()).hexdigest()


def pack(files: list[SourceFile], is_folder: bool) -> bytes:
    if not is_folder:
        return files[0].data
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for file in files:
            info = tarfile.TarInfo(file.name)
            info.size, info.mtime, info.mode = len(file.data), 0, 0o600
            archive.addfile(info, io.BytesIO(file.data))
    return buffer.getvalue()


def unpack(raw: bytes, names: list[str], is_folder: bool) -> list[SourceFile]:
    if not is_folder:
        return [SourceFile(names[0], raw)]
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r") as archive:
        return [SourceFile(name, archive.extractfile(name).read()) for name in names]
