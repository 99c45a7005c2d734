"""A stage host: the heavy libraries imported once per run, each stage forked from it.

Every stage is its own process, started by DVC from its dvc.yaml command
(`python -m privflow.stages.<stage> ...`). Importing torch, Opacus, pandas, onnxruntime and
transformers costs each of them seconds before its first useful line: most of a demo run's
wall time outside the stages' own work. `privflow run` therefore starts one host process
that imports those libraries once (privflow.stageserver), and names it in the environment
DVC passes to the stage commands. A stage command that finds it (`hand_off`, called as the
package `privflow.stages` loads, before any heavy import) sends the host its arguments,
working folder, environment and its stdin/stdout/stderr, and waits; the host forks a child
that runs the stage module exactly as `python -m` would, writing to the command's own
streams, and reports its exit status, which the command exits with.

What stays true: DVC still runs and records the same command, and `dvc repro` without a host
runs each stage in its own process as before. A kill of the command kills the stage (the host
kills the child as soon as its connection drops); a child dies with the host; the host dies
with `privflow run`. This module is the command's side, and imports nothing heavy.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

HOST_ENV = "PRIVFLOW_STAGE_HOST"
STAGE_PACKAGE = "privflow.stages."
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def share_cores(processes: int, environ=os.environ) -> None:
    """Give each of `processes` processes that compute at once its share of this machine's
    cores, in the environment they inherit, unless the user set a thread count already.
    torch's OpenMP threads spin at barriers, so two processes of two threads each on two cores
    are far slower than two of one: privflow's DP training tests ran 162 s against 44 s side
    by side. Read once, as numpy and torch load: set it before either does. One process keeps
    the libraries' own defaults."""
    if processes <= 1:
        return
    threads = str(max(1, len(os.sched_getaffinity(0)) // processes))
    for name in THREAD_VARIABLES:
        environ.setdefault(name, threads)


def address(name: str) -> str:
    return "\0privflow-stage-host-" + name  # Linux's abstract namespace: no file, no path-length limit


def same_interpreter() -> dict:
    """What must match between a command and the host for the host's imports to be the ones
    the command would have made."""
    return {"executable": os.path.realpath(sys.executable), "prefix": sys.prefix,
            "pythonpath": os.environ.get("PYTHONPATH", "")}


def hand_off() -> None:
    """If this process is `python -m privflow.stages.<stage> ...` and a host is named in the
    environment, have the host run the stage and exit with its status. Otherwise (no host,
    the host busy starting, another interpreter, any doubt) return: the stage runs here."""
    name, argv = os.environ.get(HOST_ENV), getattr(sys, "orig_argv", [])
    if not name or len(argv) < 3 or argv[1] != "-m" or not argv[2].startswith(STAGE_PACKAGE):
        return
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        connection.connect(address(name))
        request = {"module": argv[2], "args": argv[3:], "cwd": os.getcwd(), "env": dict(os.environ),
                   **same_interpreter()}
        socket.send_fds(connection, [json.dumps(request).encode()], [0, 1, 2])
        answer = connection.recv(64).decode()
    except OSError:
        connection.close()
        return
    if not answer.startswith("ok "):  # refused: said in the run's log, where a run twice as slow is looked into
        connection.close()
        print(f"privflow: the stage host refused this stage ({answer.removeprefix('no ') or 'no answer'}); it runs "
              "in a process of its own, importing its libraries itself", file=sys.stderr)
        return
    sys.exit(_wait_for(connection, int(answer.split()[1])))


def _wait_for(connection: socket.socket, child: int) -> int:
    """The child's exit status, as this process's: forwarding the signals a parent would get
    (a terminal's Ctrl-C reaches the child directly when it shares our process group)."""
    try:
        shared_group = os.getpgid(child) == os.getpgrp()
    except ProcessLookupError:  # already done
        shared_group = True

    def forward(signum, _frame):
        if not (signum == signal.SIGINT and shared_group):
            connection.send(f"signal {signum}".encode())

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    status = connection.recv(64).decode()  # a forwarded signal's handler returns, and recv resumes
    if not status:
        from privflow.errors import EXIT_TRANSIENT  # retried by the flow

        print("privflow: the stage host ended before this stage finished; the stage was stopped and is safe "
              "to run again", file=sys.stderr)
        return EXIT_TRANSIENT
    code = int(status.split()[1])
    if code < 0:  # killed by a signal: die of the same one, so DVC sees what it would have seen
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, -code):
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code
