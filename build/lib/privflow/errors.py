"""Errors a user can act on, and the exit codes the orchestrator reads.

A stage exits 2 on a refusal or bad input (never retried) and 75 (EX_TEMPFAIL) on a
transient failure (retried by the flow). Messages name the file, row or field and say what
to do; they never contain row values, keys or plaintext.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from privflow.progress import PROGRESS_DIR_ENV

EXIT_REFUSED = 2
EXIT_TRANSIENT = 75


class PrivflowError(Exception):
    """Bad input or a refused operation: fix the cause, do not retry."""


class DatasetError(PrivflowError):
    """The source file or its contents cannot be used as declared."""


class SchemaError(PrivflowError):
    """The dataset schema file is malformed or does not match the data."""


class RejectRateExceeded(PrivflowError):
    """More rows failed validation than `validate.max_reject_rate` allows."""


class IntegrityError(PrivflowError):
    """A sealed artifact failed authentication or does not match its identity."""


class KeyringError(PrivflowError):
    """The keyring is missing, unsafe, or lacks the key an artifact needs."""


class PrivacyError(PrivflowError):
    """A privacy configuration or budget refusal."""


class BudgetExceeded(PrivacyError):
    """The planned run would overspend the dataset's privacy budget."""


class TransientError(Exception):
    """A failure that may pass on retry (I/O hiccup, remote unavailable)."""


EXIT_UNEXPECTED = 70  # EX_SOFTWARE: a bug, not the user's input; never retried
LOG_DIR = Path(".privflow") / "logs"


def _stage_and_dataset() -> tuple[str, str]:
    """`python -m privflow.stages.train --dataset churn ...` -> ("train", "churn")."""
    stage = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "stage"
    dataset = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--dataset"), "?")
    return stage, dataset


def write_traceback(error: BaseException, label: str) -> Path:
    """The frames of an unexpected failure (file, line, function, source line) and the
    exception types, to .privflow/logs/. No exception message and no local variable is
    written: either may quote a row value."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    path = LOG_DIR / f"{label}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}.traceback"
    lines = []
    for cause in _chain(error):
        lines.append(f"{type(cause).__module__}.{type(cause).__qualname__} (message withheld: it may quote data)")
        lines += traceback.format_list(traceback.extract_tb(cause.__traceback__))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _chain(error: BaseException | None) -> list[BaseException]:
    found = []
    while error is not None and error not in found:
        found.append(error)
        error = error.__cause__ or error.__context__
    return found[::-1]


def describe_unexpected(error: BaseException, label: str) -> str:
    """One line for a user: what failed, where the traceback (without values) was written."""
    frames = traceback.extract_tb(error.__traceback__)
    here = next((f for f in reversed(frames) if "/components/" in f.filename or "/flows/" in f.filename),
                frames[-1] if frames else None)
    where = f" in {here.name} ({Path(here.filename).name}:{here.lineno})" if here else ""
    notes = "".join(f"; {note}" for note in getattr(error, "__notes__", []))
    return (f"unexpected {type(error).__name__}{where}{notes}; traceback (no values) in "
            f"{write_traceback(error, label)}: please report it with that file")


def _record_loaded_modules(stage: str) -> None:
    """With $PRIVFLOW_TRACE_IMPORTS set (the code-deps test), append the privflow files this
    stage really loaded: the ground truth its dvc.yaml deps must cover."""
    trace = os.environ.get("PRIVFLOW_TRACE_IMPORTS")
    if trace:
        files = sorted({m.__file__ for name, m in list(sys.modules.items())
                        if name.split(".")[0] == "privflow" and getattr(m, "__file__", None)})
        with open(trace, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"stage": stage, "files": files}) + "\n")


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(), turning every failure into one line and an exit code: a
    user never sees a raw traceback, and never a row value."""
    from privflow.lockfile import remember_lock

    stage, dataset = _stage_and_dataset()
    started = time.perf_counter()
    try:
        remember_lock()  # before any work: DVC recorded every stage before this one
        main()
        _record_loaded_modules(stage)
        if os.environ.get(PROGRESS_DIR_ENV):  # under `privflow run`: into its log, for the start-up figure
            print(f"privflow timing: {stage}@{dataset} worked {time.perf_counter() - started:.3f} s", file=sys.stderr)
    except PrivflowError as error:
        notes = "".join(f" ({note})" for note in getattr(error, "__notes__", []))
        print(f"privflow: {type(error).__name__}: {error}{notes}", file=sys.stderr)
        sys.exit(EXIT_REFUSED)
    except TransientError as error:
        print(f"privflow: transient failure, safe to retry: {error}", file=sys.stderr)
        sys.exit(EXIT_TRANSIENT)
    except Exception as error:  # noqa: BLE001 (the last line of defence: one line, no values)
        print(f"privflow: stage {stage} of dataset {dataset} failed: "
              f"{describe_unexpected(error, f'{stage}-{dataset}')}", file=sys.stderr)
        sys.exit(EXIT_UNEXPECTED)
