"""Mending what a killed `dvc repro` can leave cut short in a project: dvc.lock (privflow
keeps a complete copy as each stage starts, privflow.lockfile) and DVC's path-lock file."""

from __future__ import annotations

from pathlib import Path

from dvc.repo import Repo

from privflow.errors import PrivflowError
from privflow.lockfile import LOCK, looks_complete, restore_lock, write_atomically


def lock_problem(repo: Repo) -> str | None:
    """Why the project's dvc.lock cannot be trusted as it stands, or None: DVC refuses it, or
    DVC would load it but did not finish writing it (privflow.lockfile.looks_complete). Those
    cuts are the dangerous ones: an empty lock reads as "nothing recorded", an out cut before
    its hash as "changed", and taking them at their word runs stages again (train spending
    anew)."""
    from dvc.dvcfile import Lockfile
    from dvc.exceptions import DvcException

    root = Path(repo.root_dir)
    lock = root / LOCK
    if not lock.exists():
        return None
    try:
        Lockfile(repo, str(lock), verify=False).load()
    except DvcException as error:
        return " ".join(str(error).split())
    if not looks_complete(lock.read_text(encoding="utf-8", errors="replace")):
        return "it ends part-way through what DVC was writing" if lock.stat().st_size else "it is empty"
    return None


def repair_lock(repo: Repo) -> str | None:
    """Put back the last complete dvc.lock if DVC cannot use this one; what was done, or None."""
    problem = lock_problem(repo)
    if not problem:
        return None
    mended = restore_lock(Path(repo.root_dir), problem)
    if mended is None:
        raise PrivflowError(
            f"{Path(repo.root_dir) / LOCK}: {problem}, and privflow holds no complete copy of it; put back the "
            f"committed one (`git checkout {LOCK}`), then run again: stages recorded since then run again")
    return mended


def repair_rwlock(repo: Repo) -> str | None:
    """DVC records which process reads or writes which path in .dvc/tmp/rwlock, rewriting it
    in place (`open(path, "w")`, then the JSON) as every stage starts and ends; a run killed
    in that instant leaves it cut, and DVC then refuses every stage ("Unable to read
    RWLock-file ... JSON structure is corrupted"). Its entries only matter while their
    processes live, and DVC already ignores those of dead ones; so a cut one is replaced by
    an empty one, under DVC's own guard for that file (the cut file kept for an audit)."""
    import json
    import shutil

    from dvc.lock import make_lock
    from dvc.rwlock import RWLOCK_FILE, RWLOCK_LOCK

    path = Path(repo.tmp_dir) / RWLOCK_FILE

    def readable() -> bool:
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return True
        except (ValueError, UnicodeDecodeError):
            return False
        return True

    if readable():
        return None
    with make_lock(str(path.with_name(RWLOCK_LOCK)), tmp_dir=repo.tmp_dir,
                   hardlink_lock=repo.config["core"].get("hardlink_lock", False)):
        if readable():  # another process mended it first
            return None
        kept = Path(repo.root_dir) / ".privflow" / "dvc-rwlock.cut"
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, kept)
        write_atomically(path, "{}")
    return (f"{path} was cut short (a run was killed while DVC recorded its path locks); replaced by an empty "
            f"one, as no killed process holds a lock. The cut file is kept as {kept}")
