"""A source's sealed snapshot and its manifest: written by ingest, read by validate and encrypt.

The snapshot id is a keyed digest of the source bytes (Vault.snapshot_id), so re-ingesting
identical bytes yields the same id, and no one without the keyring can test a guess of them.
The manifest holds no time: identical bytes give identical outputs (and DVC hashes), so
nothing downstream re-runs. When each snapshot was taken goes to an append-only log.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from privflow.artifacts import read_json, write_json
from privflow.catalog import MANIFEST, SNAPSHOT, snapshot_identity
from privflow.crypto.vault import Vault
from privflow.data.records import describe_source
from privflow.data.schema import DatasetSchema
from privflow.errors import DatasetError
from privflow.data.sources import (PIECE, ChunkStream, HashingReader, Member, combine_ids, list_source, pack_stream,
                                   snapshot_members)
from privflow.settings import IngestSettings


@dataclass(frozen=True)
class SnapshotManifest:
    dataset: str
    snapshot_id: str
    source: str
    rows: int
    columns: list[str]  # the header's names, only when they are the schema's (else it may be a data row)
    key_id: str
    files: list[str]  # the source's files, in name order
    folder: bool
    header_fields: int = 0
    header_matches_schema: bool = True


def declared_header(header: list[str], schema: DatasetSchema | None) -> list[str] | None:
    """The header when every name in it is one the schema declares; None otherwise: a file
    without its header line has a data row there, and that must never reach a manifest."""
    if schema is None or not header or not set(header) <= set(schema.columns):
        return None
    return header


def ingest_snapshot(dataset: str, settings: IngestSettings, vault: Vault, out_dir: Path,
                    schema: DatasetSchema | None = None, expected_id: str | None = None) -> SnapshotManifest:
    """Hash and describe the source in one streaming pass, then seal it in a second. With
    `expected_id` (the fingerprint DVC ran ingest for), bytes that differ from it are refused
    before anything is written: the lineage in dvc.lock would name other data."""
    paths, folder = list_source(settings.source), settings.source.is_dir()
    with ExitStack() as stack:
        hashed = [(p.name, HashingReader(stack.enter_context(open(p, "rb")))) for p in paths]
        header, rows = describe_source(hashed, str(settings.source),
                                       delimiter=settings.delimiter, encoding=settings.encoding)
        content = combine_ids([(name, reader.hexdigest()) for name, reader in hashed], folder)
    snapshot = vault.snapshot_id(content)
    if expected_id is not None and snapshot != expected_id:
        raise DatasetError(f"{settings.source}: its bytes are not the ones its fingerprint was taken of (it changed "
                           f"since); nothing was ingested. Once it is written in full, run `privflow run -d {dataset}` "
                           f"(or `dvc repro ingest@{dataset}`, which takes the fingerprint first)")
    sealed = vault.seal_stream(pack_stream(paths, folder, content), snapshot_identity(dataset, snapshot),
                               out_dir / SNAPSHOT)
    named = declared_header(header, schema)
    manifest = SnapshotManifest(
        dataset=dataset, snapshot_id=snapshot, source=str(settings.source),
        rows=rows, columns=named or [], key_id=sealed.key_id,
        files=[p.name for p in paths], folder=folder, header_fields=len(header), header_matches_schema=bool(named),
    )
    write_json(out_dir / MANIFEST, asdict(manifest))
    log_ingest(settings.log, manifest)
    return manifest


def log_ingest(log: Path, manifest: SnapshotManifest) -> None:
    event = {"ingested_at": datetime.now(UTC).isoformat(timespec="seconds"), "dataset": manifest.dataset,
             "snapshot_id": manifest.snapshot_id, "source": manifest.source, "rows": manifest.rows}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(event) + "\n")


def read_manifest(snapshot_dir: Path) -> SnapshotManifest:
    return SnapshotManifest(**read_json(snapshot_dir / MANIFEST))


@contextmanager
def open_snapshot(vault: Vault, snapshot_dir: Path) -> Iterator[tuple[SnapshotManifest, Iterator[Member]]]:
    """The manifest and the snapshot's files as authenticated streams, read once, in order.

    Plaintext only ever exists a chunk at a time, in memory. A tampered chunk raises
    IntegrityError when it is reached, so callers write their outputs only at the end.
    """
    manifest = read_manifest(snapshot_dir)
    chunks = vault.open_stream(snapshot_dir / SNAPSHOT, snapshot_identity(manifest.dataset, manifest.snapshot_id))
    stream = io.BufferedReader(ChunkStream(chunks), buffer_size=PIECE)
    try:
        yield manifest, snapshot_members(stream, manifest.files, manifest.folder)
    finally:
        chunks.close()
