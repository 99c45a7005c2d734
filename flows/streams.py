"""Where file descriptors 1 and 2 go while a run runs: this process's and every child's (the
stage commands, DVC, a local Dask cluster) into the run's log, or, verbose, shown as they were
and copied to it."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TextIO


@contextmanager
def output_to_log(path: Path) -> Iterator[TextIO]:
    """Send file descriptors 1 and 2 to the log: this process's (Prefect's log handler, DVC)
    and every child's (the stage commands, a local Dask cluster) inherit them. Yields a stream
    on what stdout was, for the board."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    with open(path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            terminal.close()


LONGEST_LOGGED_PART = 1 << 20  # a line longer than this (no newline yet) reaches the log in parts


def _copy_out(pipe: int, shown: int, log: BinaryIO, lock: threading.Lock) -> None:
    """Until every writer closed the pipe: each chunk at once to where it was shown, and to the
    log whole lines only, so stdout's and stderr's lines never merge there (Python writes a
    print's text and its newline apart). The copy owns `shown` (a duplicate of the descriptor),
    so no number it writes to is reused."""
    pending = b""
    with os.fdopen(pipe, "rb", buffering=0) as source, os.fdopen(shown, "wb", buffering=0) as out:
        while chunk := source.read(65536):
            try:
                out.write(chunk)
            except OSError:  # the terminal went away; the log still gets the rest
                pass
            pending += chunk
            cut = len(pending) if len(pending) > LONGEST_LOGGED_PART else pending.rfind(b"\n") + 1
            _log_part(log, lock, pending[:cut])
            pending = pending[cut:]
        _log_part(log, lock, pending)


def _log_part(log: BinaryIO, lock: threading.Lock, part: bytes) -> None:
    with lock:
        if part and not log.closed:
            log.write(part)


@contextmanager
def output_shown_and_logged(path: Path) -> Iterator[TextIO]:
    """`--verbose`: file descriptors 1 and 2 (this process's and every child's, as in
    output_to_log) still reach where they went, live, each through a pipe that also copies it to
    the run's log, so a verbose run is recorded like any other. Yields this process's stdout."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    lock = threading.Lock()
    log = open(path, "ab", buffering=0)
    copies = []
    for target, shown in zip((1, 2), saved):
        pipe, writer = os.pipe()
        os.dup2(writer, target)
        os.close(writer)
        copies.append(threading.Thread(target=_copy_out, args=(pipe, os.dup(shown), log, lock), daemon=True))
        copies[-1].start()
    try:
        yield sys.stdout
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)  # the pipes' last writers here: the copies end once children closed theirs
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        for copy in copies:
            copy.join(timeout=5)  # a child that outlives the run (a cluster's worker) is not waited for
        with lock:
            log.close()
