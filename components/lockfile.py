"""dvc.lock outlives a run killed while DVC records a stage.

DVC rewrites dvc.lock in place (`open(path, "w+")`, then the YAML, stage after stage), so a
run killed in that instant leaves a lock cut short. Some cuts DVC refuses ("'./dvc.lock'
validation failed", or an "unexpected error" for a hash name cut to `md`); others it loads
quietly and misreads: an empty lock as "nothing recorded", an out cut before its hash as
"changed", so stages run again, train spending budget anew. Two guards:

- every stage command, as it starts, keeps a copy of the lock it finds: DVC writes the lock
  after a stage ends and before it starts the next, so that copy is the complete record of
  every stage before this one (`remember_lock`);
- when the lock is cut (`looks_complete` says no, or DVC refuses it), privflow puts that
  copy back (`restore_lock`: from `privflow repair` and every privflow command that opens
  the project, `privflow run` included). The stage DVC was recording when the run died is
  then out of date and runs again, or comes back from DVC's run cache; what was recorded
  before it is kept. The cut lock is kept beside the copy for whoever audits it.

What is left: a cut that falls exactly at a line's end can look whole (an entry missing its
later items); DVC then runs that stage again, as after a kill just before it recorded it.
Under `privflow run` DVC's lock writes are atomic as well (privflow.flows.dvcfiles), so only a
kill of a plain `dvc repro` can cut the lock.
"""

from __future__ import annotations

import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

LOCK = Path("dvc.lock")
LAST_COMPLETE = Path(".privflow") / "dvc.lock.last-complete"


def looks_complete(text: str) -> bool:
    """Whether DVC finished writing this lock. A cut may fall anywhere, and many cuts still
    load (`hash: md` where `md5` was being written, an out without its hash), so a complete
    lock has DVC's shape: it ends a line, has its schema line and a mapping of stages, each
    with its command, and every dep or out with a path carries a whole md5 (an etag or
    checksum for a remote one). DVC's own schema
    (0.3 s to import) is left to the commands that open the project."""
    import yaml

    if not text.endswith("\n"):
        return False
    try:
        lock = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return False
    stages = lock.get("stages") if isinstance(lock, dict) else None
    return (lock.get("schema") == "2.0" and isinstance(stages, dict)
            and all(isinstance(entry, dict) and "cmd" in entry and _whole_hashes(entry) for entry in stages.values()))


def _whole_hashes(entry: dict) -> bool:
    files = [item for key in ("deps", "outs") for item in entry.get(key) or [] if isinstance(item, dict) and "path" in item]
    return all(_whole_hash(item) for item in files)


def _whole_hash(item: dict) -> bool:
    if "md5" in item:
        return isinstance(item["md5"], str) and re.fullmatch(r"[0-9a-f]{32}(\.dir)?", item["md5"]) is not None
    return any(isinstance(item.get(key), str) and item[key] for key in ("etag", "checksum"))  # a remote dep


def write_atomically(path: Path, text: str) -> None:
    """Readers (and a kill) see the old file or the new one, never part of it; the new file
    gets the mode a plain `open` would give it."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def remember_lock(root: Path = Path(".")) -> None:
    """Keep a copy of the project's lock as this stage finds it (the stage commands call it)."""
    try:
        text = (root / LOCK).read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return
    copy = root / LAST_COMPLETE
    if not looks_complete(text) or (copy.exists() and copy.read_text(encoding="utf-8") == text):
        return
    copy.parent.mkdir(parents=True, exist_ok=True)
    for left in copy.parent.glob(f".{copy.name}.*.partial"):  # of a stage killed as it kept its copy
        if not _alive(int(left.name.split(".")[-2])):
            left.unlink(missing_ok=True)
    write_atomically(copy, text)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def restore_lock(root: Path, problem: str) -> str | None:
    """Put the last complete copy back over a cut lock (`problem`: what is wrong with it);
    what to tell the user, or None when there is no complete copy to put back. (This module
    imports nothing of privflow: the stage runner, privflow.errors, calls it.)"""
    lock, copy = root / LOCK, root / LAST_COMPLETE
    if not copy.exists() or not looks_complete(copy.read_text(encoding="utf-8")):
        return None
    kept = root / LAST_COMPLETE.parent / f"dvc.lock.cut-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    shutil.copyfile(lock, kept)
    write_atomically(lock, copy.read_text(encoding="utf-8"))
    return (f"{lock} was cut short ({problem}): a run was killed while DVC recorded a stage. Put back the "
            f"copy taken as the last stage started ({copy}); the stage being recorded will run again. "
            f"The cut file is kept as {kept}")
