"""Files written whole or not at all: the sealed artifacts (privflow.crypto.vault) and the
keyring (privflow.crypto.keys) go to disk through `replacing`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def replacing(dest: Path, mode: int = 0o666) -> Iterator[BinaryIO]:
    """A file that replaces `dest` once written and synced (`mode`: its permissions, less the
    umask). Written unnamed (O_TMPFILE) where the file system allows: a writer killed mid-way
    (a SIGKILLed training in its checkpoint, a killed key rotation) then leaves nothing
    behind, where a named `.partial` stayed wherever no later run cleared it (a checkpoint
    directory, when DVC restored the stage from its run cache). Elsewhere (no O_TMPFILE: not
    Linux, an older overlayfs), and between naming and renaming, a `.partial` beside `dest`."""
    named = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    try:
        fd, unnamed = os.open(dest.parent, os.O_TMPFILE | os.O_WRONLY, mode), True
    except (AttributeError, OSError):
        fd, unnamed = os.open(named, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), False
    with os.fdopen(fd, "wb") as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())
        if unnamed:
            named.unlink(missing_ok=True)  # left by a killed writer that had this pid
            _name_unnamed(fd, named)
    os.replace(named, dest)


def _name_unnamed(fd: int, name: Path) -> None:
    """linkat(2) with AT_SYMLINK_FOLLOW on /proc's link to `fd`, as open(2) documents for
    O_TMPFILE. (os.link calls link(2), which would link the /proc symlink itself, unless a
    directory fd is given.)"""
    folder = os.open(name.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.link(f"/proc/self/fd/{fd}", name.name, dst_dir_fd=folder, follow_symlinks=True)
    finally:
        os.close(folder)
