"""The stage host's side (privflow.stagehost says why there is one): started by `privflow
run`, it imports the heavy libraries once, then forks one child per stage command that asks,
and sends back the child's exit status.

The host imports no privflow module beyond these two, so what a stage loads of privflow's own
code (the dvc.yaml deps) is exactly what it loads without a host. The host never runs a
tensor operation, so torch's thread pools do not exist when it forks; the threads libraries
start at import (OpenBLAS' pool, pyarrow's jemalloc) sit idle and re-initialise at fork. Only a
process of the same user (SO_PEERCRED), running the same interpreter and environment prefix,
is served; anything else runs the stage itself.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import selectors
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from privflow.stagehost import HOST_ENV, STAGE_PACKAGE, address, same_interpreter

# The libraries the stages import (directly or through privflow's modules), heaviest first.
PRELOADED = (
    "torch", "opacus", "opacus.accountants", "opacus.validators", "opacus.layers", "opacus.grad_sample",
    "onnxruntime", "onnxruntime.quantization", "onnx", "safetensors.torch", "pandas", "pyarrow", "pyarrow.parquet",
    "pyarrow.csv", "pandera.pandas", "numpy", "cryptography.hazmat.primitives.ciphers.aead", "matplotlib.pyplot",
    "jinja2", "pydantic", "yaml", "dp_accounting.rdp", "dp_accounting.pld", "sqlalchemy", "blake3",
    # torch's ONNX exporter (compress); its TorchScript-based export loads the rest in 0.03 s
    "torch.onnx",
)
TEXT_PRELOADED = ("transformers", "transformers.models.bert", "tokenizers")  # the text model's only: 2 s here
_MESSAGE = 1 << 20  # a request: arguments and environment, well under this


@contextmanager
def stage_host(needs_text: Callable[[], bool] = lambda: True) -> Iterator[None]:
    """A host for the stages this process's DVC runs (asked whether one uses the text model only
    if a host starts), named in the environment its stage commands inherit; stopped on exit.
    `PRIVFLOW_STAGE_HOST=none` turns it off: each stage imports its libraries, as under `dvc repro`."""
    if os.environ.get(HOST_ENV):
        yield
        return
    name, host = start_host(needs_text())
    os.environ[HOST_ENV] = name
    try:
        yield
    finally:
        del os.environ[HOST_ENV]
        stop_host(host)


def start_host(text: bool = True) -> tuple[str, subprocess.Popen]:
    """A new host, serving once its imports are done, and its name (for HOST_ENV)."""
    name = secrets.token_hex(16)
    return name, subprocess.Popen([sys.executable, "-m", "privflow.stageserver", name, str(os.getpid()),
                                   "text" if text else "tabular"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_host(host: subprocess.Popen) -> None:
    host.terminate()
    try:
        host.wait(timeout=10)
    except subprocess.TimeoutExpired:
        host.kill()
        host.wait()


def wait_until_serving(name: str, timeout: float = 120.0) -> bool:
    """Whether the host named `name` accepts stage commands within `timeout` seconds (its
    imports take a few): for tests and benchmarks, a run never waits for it."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
            try:
                probe.connect(address(name))
                return True
            except OSError:
                time.sleep(0.1)
    return False


def preload(text: bool) -> None:
    """Import the heavy libraries (the text model's if `text`); one that fails is left to its stage."""
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module in PRELOADED + (TEXT_PRELOADED if text else ()):
            try:
                importlib.import_module(module)
            except Exception:  # noqa: BLE001 (an optional library: the stage that needs it says so)
                pass


def serve(name: str, parent: int, text: bool = True) -> None:
    """Accept stage commands until `privflow run` ends: SIGTERM on its way out, or its death
    (checked every second: a parent-death signal would follow the thread that started the
    host, and Prefect may start it from a worker thread). Each command is forked, watched, and
    its status sent back; the children left when the host stops are killed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the stages, not for the host
    preload(text)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(address(name))
    listener.listen(64)
    wakeup_read, wakeup_write = socket.socketpair()
    wakeup_write.setblocking(False)
    signal.set_wakeup_fd(wakeup_write.fileno())
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup socket hears of each exit
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "listener")
    selector.register(wakeup_read, selectors.EVENT_READ, "wakeup")
    children: dict[int, socket.socket] = {}  # child pid -> its command's connection
    while not stopping and os.getppid() == parent:
        for key, _ in selector.select(timeout=1.0):
            if key.data == "listener":
                _accept(listener, selector, children, keep=[listener, wakeup_read, wakeup_write])
            elif key.data == "wakeup":
                wakeup_read.recv(4096)
            else:
                _from_command(key.fileobj, key.data, selector, children)
        _reap(selector, children)
    for child in children:
        _signal(child, signal.SIGKILL)


def _accept(listener, selector, children, keep) -> None:
    connection, _ = listener.accept()
    try:
        payload, fds, _, _ = socket.recv_fds(connection, _MESSAGE, 3)
        request = json.loads(payload)
        refusal = _refusal(connection, request, fds)
    except (OSError, ValueError):
        connection.close()
        return
    if refusal:
        for fd in fds:
            os.close(fd)
        connection.send(f"no {refusal}".encode())
        connection.close()
        return
    child = os.fork()
    if child == 0:
        for held in [*keep, *children.values(), connection, selector]:
            held.close()
        _run_stage(request, fds)  # never returns
    for fd in fds:
        os.close(fd)
    children[child] = connection
    selector.register(connection, selectors.EVENT_READ, child)
    connection.send(f"ok {child}".encode())


def _refusal(connection, request: dict, fds: list[int]) -> str | None:
    _pid, uid, _gid = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                              struct.calcsize("3i")))
    if uid != os.getuid():
        return "another user"
    if {k: request.get(k) for k in same_interpreter()} != same_interpreter():
        return "another interpreter"
    if not str(request.get("module", "")).startswith(STAGE_PACKAGE) or len(fds) != 3:
        return "not a stage"
    return None


def _from_command(connection, child: int, selector, children) -> None:
    try:
        message = connection.recv(64).decode()
    except OSError:
        message = ""
    if not message:  # the command was killed: so is its stage, as if it had run in that process
        _signal(child, signal.SIGKILL)
        _unwatch(selector, connection)
    elif message.startswith("signal "):
        _signal(child, int(message.split()[1]))


def _reap(selector, children) -> None:
    while children:
        try:
            child, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if child == 0:
            return
        connection = children.pop(child, None)
        if connection is None:
            continue
        try:
            connection.send(f"exit {os.waitstatus_to_exitcode(status)}".encode())
        except OSError:
            pass
        _unwatch(selector, connection)
        connection.close()


def _unwatch(selector, connection) -> None:
    try:
        selector.unregister(connection)
    except (KeyError, ValueError):  # already, when its command's end closed first
        pass


def _signal(child: int, signum: int) -> None:
    try:
        os.kill(child, signum)
    except ProcessLookupError:
        pass


def die_with_parent(signum: int) -> None:
    """Have Linux send this process `signum` when its parent dies, even by SIGKILL (which no
    handler can see); nothing elsewhere."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signum)  # PR_SET_PDEATHSIG


def _run_stage(request: dict, fds: list[int]) -> None:
    """In the forked child: become the stage command's process (its streams, folder,
    environment and arguments), run the module as `python -m` would, and exit."""
    import atexit
    import io
    import runpy

    code = 1
    try:
        die_with_parent(signal.SIGKILL)
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="strict",
                                      line_buffering=os.isatty(1), write_through=unbuffered)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                      errors="backslashreplace", line_buffering=True)
        sys.argv = ["-m", *request["args"]]
        sys.path[0] = request["cwd"]  # as `python -m` puts the working folder first
        _fresh_process_state()
        try:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
            if isinstance(done.code, str):
                print(done.code, file=sys.stderr)
        except KeyboardInterrupt:
            code = 128 + signal.SIGINT
        except BaseException:  # noqa: BLE001 (as the interpreter would: the traceback, exit 1)
            import traceback

            traceback.print_exc()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _fresh_process_state() -> None:
    """What a fresh process would have derived from its own environment or the OS, the host's
    imports had fixed: the temp folder (from TMPDIR: plaintext must never land in the host's),
    and numpy's global generator, seeded from the OS (a forked one would share the host's
    state with every other stage), and torch's thread count from the command's OMP_NUM_THREADS
    (OpenMP read the host's as torch loaded). `random` reseeds at fork; torch's seed is fixed anyway."""
    import tempfile

    tempfile.tempdir = None
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()
    torch, threads = sys.modules.get("torch"), os.environ.get("OMP_NUM_THREADS", "")
    if torch is not None and threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), sys.argv[3:] != ["tabular"])
