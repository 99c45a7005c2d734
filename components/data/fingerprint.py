"""The sources' fingerprints: each one's keyed snapshot id, the file through which DVC sees it.

DVC records the MD5 and size of every stage dep in dvc.lock, which teams commit. While ingest
depended on the source file itself, every clone of the repository carried an unkeyed digest
of the private data: DP's adversary, who knows every record but one, could test guesses of
that one against it, whatever noise training adds. So ingest depends on the dataset's
fingerprint instead (artifacts/fingerprints/<dataset>.json), written by the `fingerprint`
stage: the snapshot id (HMAC under the keyring's snapshot-id key, Vault.snapshot_id), which
only a keyring holder can test a guess against. That stage has no deps for DVC to hash and is
`always_changed`: plain `dvc repro` runs it every time, and re-runs a dataset's ingest exactly
when its id changes, as it did when the bytes did.

One stage takes every dataset's fingerprint, not one stage per dataset: DVC rewrites the whole
dvc.lock after each stage it runs (a round trip of ~1.6 s for the demo's five datasets, even
when nothing in it changed), so a no-op `dvc repro` paid that once per dataset (11-12.5 s
against 1.5 s before fingerprints). A source that cannot be read does not stop the others:
its fingerprint says why instead of an id, and its own ingest refuses with that reason.

Re-reading a large source on every run is avoided the way DVC avoids re-hashing it: a local
cache (.privflow/fingerprints/<dataset>.json, never committed) remembers the id for each
file's (path, inode, size, mtime), themselves kept only as a MAC under the same key.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from privflow.artifacts import open_vault, read_json, write_json
from privflow.crypto.vault import Vault
from privflow.data.sources import list_source, snapshot_id
from privflow.errors import PrivflowError
from privflow.settings import dataset_names, keyring_path, load_settings
from privflow.stage_settings import LEFT_OUT, remember_settings, settings_file, settings_seen_by_each_stage

FINGERPRINTS = "fingerprints"  # artifacts/fingerprints/: the fingerprint stage's output, <dataset>.json in it
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


def fingerprint_file(folder: Path, dataset: str) -> Path:
    return folder / f"{dataset}.json"


def is_fingerprint(path: str) -> bool:
    """Whether a dep in DVC's status is a dataset's fingerprint (the source, as DVC sees it)."""
    return Path(path).parent.name == FINGERPRINTS and path.endswith(".json")


def stage_of_settings(path: str) -> str | None:
    """The stage whose file of what it reads of the settings a dep in DVC's status is, if it is one."""
    folder = Path(path).parent
    return folder.name if folder.name in LEFT_OUT and folder.parent.name == FINGERPRINTS else None


def write_fingerprint(path: Path, document: dict) -> bool:
    """Write the fingerprint unless it already says the same; True if it changed. An unchanged
    file keeps its mtime, so DVC need not even hash it again."""
    if read_fingerprint(path) == document:
        return False
    write_json(path, document)
    return True


def read_fingerprint(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def unreadable(path: Path) -> str | None:
    """Why the source of the fingerprint at `path` could not be read when it was taken, if it could not."""
    document = read_fingerprint(path)
    return document.get("unavailable") if isinstance(document, dict) else None


def _fingerprint(project: Path, dataset: str, vault: Vault) -> dict:
    """One dataset's fingerprint: its id, or why its source (or its settings) cannot be read."""
    try:
        source = load_settings(dataset, project / "params.yaml").ingest.source
        keyed = source_id(source if source.is_absolute() else project / source, vault,
                          project / STAT_CACHE / f"{dataset}.json")
    except PrivflowError as error:
        return {"dataset": dataset, "unavailable": str(error)}
    except OSError as error:  # unreadable (permissions, a vanished file): the path and the reason, no content
        return {"dataset": dataset, "unavailable": f"{error.filename or dataset}: {error.strerror or error}"}
    return {"dataset": dataset, "snapshot_id": keyed}


FINGERPRINTS_LOCK = Path(".privflow") / "fingerprints.lock"  # in the project, outside every DVC output


@contextmanager
def one_taking_at_a_time(project: Path) -> Iterator[None]:
    """Two runs planning at once, or a plan beside a running fingerprint stage, write the same
    files, and each taking removes what it does not keep from the folder: one removed the other's
    file in flight (a FileNotFoundError, seen when two `privflow run`s started together; the
    shared `.partial` name write_json had then is gone since 76e0f54, the removal is not). They
    take turns; a taking is milliseconds."""
    lock = project / FINGERPRINTS_LOCK
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released as the file closes, or the process dies
        yield


def take_fingerprints(project: Path, folder: Path, vault: Vault | None = None) -> dict[str, str]:
    """Bring the fingerprint of every dataset in params.yaml up to date in `folder`, and drop
    those of datasets no longer declared. Returns each dataset's news: "changed", "unchanged"
    or "unavailable: <why>" (its ingest refuses with that reason; the others go on)."""
    vault = vault or open_vault()
    with one_taking_at_a_time(project):
        return _take_fingerprints(project, folder, vault)


def _take_fingerprints(project: Path, folder: Path, vault: Vault) -> dict[str, str]:
    news = {}
    for dataset in dataset_names(project / "params.yaml"):
        document = _fingerprint(project, dataset, vault)
        changed = write_fingerprint(fingerprint_file(folder, dataset), document)
        news[dataset] = (f"unavailable: {document['unavailable']}" if "unavailable" in document
                         else "changed" if changed else "unchanged")
        # what each stage reads of the settings, its dep in place of the entry (privflow.stage_settings)
        for stage, document in settings_seen_by_each_stage(project, dataset).items():
            seen = settings_file(folder, stage, dataset)
            write_fingerprint(seen, document)
            remember_settings(project, stage, dataset, seen)
    for files in (folder, *(folder / stage for stage in LEFT_OUT)):  # a removed dataset's, a killed write's .partial
        kept = {fingerprint_file(files, dataset).name for dataset in news}
        for stale in files.iterdir():
            if stale.name not in kept and stale.is_file():
                stale.unlink()
    return news


def refresh_fingerprints(project: Path, folder: Path) -> bool:
    """Take the fingerprints in privflow's own process, as their stage would, so that DVC's
    status of ingest tells the truth before a run: a changed source shows as ingest's changed
    dep, not as the fingerprint stage that DVC always calls changed. False (left to the
    stage, which says why when it runs) when the keyring or params.yaml cannot be read."""
    if not keyring_path().exists():
        return False
    try:
        take_fingerprints(project, folder)
    except PrivflowError:
        return False
    return True
