"""A source's fingerprint: its keyed snapshot id, the file through which DVC sees the source.

DVC records the MD5 and size of every stage dep in dvc.lock, which teams commit. While ingest
depended on the source file itself, every clone of the repository carried an unkeyed digest
of the private data: DP's adversary, who knows every record but one, could test guesses of
that one against it, whatever noise training adds. So ingest depends on this fingerprint
instead, written by the `fingerprint` stage: the snapshot id (HMAC under the keyring's
snapshot-id key, Vault.snapshot_id), which only a keyring holder can test a guess against.
That stage has no deps for DVC to hash and is `always_changed`: plain `dvc repro` runs it
every time, and re-runs ingest exactly when the id changes, as it did when the bytes did.

Re-reading a large source on every run is avoided the way DVC avoids re-hashing it: a local
cache (.privflow/fingerprints/<dataset>.json, never committed) remembers the id for each
file's (path, inode, size, mtime), themselves kept only as a MAC under the same key.
"""

from __future__ import annotations

import json
from pathlib import Path

from privflow.artifacts import open_vault, read_json, write_json
from privflow.crypto.vault import Vault
from privflow.data.sources import list_source, snapshot_id
from privflow.errors import PrivflowError
from privflow.settings import keyring_path, load_settings

FINGERPRINT = "fingerprint.json"  # artifacts/<dataset>/fingerprint.json: the fingerprint stage's only output
STAT_CACHE = Path(".privflow") / "fingerprints"  # under the project: local state, git-ignored


def _stat_mac(vault: Vault, paths: list[Path]) -> str:
    """A MAC of what identifies the files' current bytes without reading them, as DVC's own
    state cache does; "stat" keeps it apart from every content digest ("sha256:...")."""
    listing = []
    for path in paths:
        stat = path.stat()
        listing.append(f"{path.resolve()}\0{stat.st_ino}\0{stat.st_size}\0{stat.st_mtime_ns}")
    return vault.snapshot_id("stat\0" + "\n".join(listing))


def source_id(source: Path, vault: Vault, cache: Path | None = None) -> str:
    """The source's keyed snapshot id: from `cache` (a file) when no file of it changed since it
    was written, else read and hashed, and the cache updated. A file that changes while it is
    read is hashed, but not cached."""
    paths = list_source(source)
    before = _stat_mac(vault, paths)
    if cache is not None and cache.exists():
        try:
            remembered = read_json(cache)
        except (ValueError, OSError):  # a cut or unreadable cache is only a cache: hash again
            remembered = {}
        if remembered.get("stat") == before and remembered.get("snapshot_id"):
            return remembered["snapshot_id"]
    keyed = vault.snapshot_id(snapshot_id(paths, source.is_dir()))
    if cache is not None and _stat_mac(vault, paths) == before:
        write_json(cache, {"stat": before, "snapshot_id": keyed})
    return keyed


def write_fingerprint(path: Path, dataset: str, keyed_id: str) -> bool:
    """Write the fingerprint unless it already says the same; True if it changed. An unchanged
    file keeps its mtime, so DVC need not even hash it again."""
    document = {"dataset": dataset, "snapshot_id": keyed_id}
    if read_fingerprint(path) == document:
        return False
    write_json(path, document)
    return True


def read_fingerprint(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def refresh_fingerprint(dataset: str, source: Path, vault: Vault, out: Path,
                        project: Path = Path(".")) -> tuple[str, bool]:
    """Bring one dataset's fingerprint up to date with its source: the id, and whether it changed."""
    keyed = source_id(source, vault, project / STAT_CACHE / f"{dataset}.json")
    return keyed, write_fingerprint(out, dataset, keyed)


def refresh_fingerprints(project: Path, outputs: dict[str, Path]) -> set[str]:
    """Bring the fingerprints of the datasets in `outputs` (dataset -> its fingerprint file) up
    to date, as their stage would, so that DVC's status of ingest tells the truth before the
    run: a changed source shows as ingest's changed dep, not as a fingerprint stage that DVC
    always calls changed. Returns the datasets done; one whose settings, source or keyring
    cannot be read is left to its stage, which says why when it runs."""
    if not outputs or not keyring_path().exists():
        return set()
    vault, done = open_vault(), set()
    for dataset, out in outputs.items():
        try:
            source = load_settings(dataset, project / "params.yaml").ingest.source
            refresh_fingerprint(dataset, source if source.is_absolute() else project / source, vault, out, project)
        except PrivflowError:
            continue
        done.add(dataset)
    return done
