"""Errors a user can act on, and the exit codes the orchestrator reads.

A stage exits 2 on a refusal or bad input (never retried) and 75 (EX_TEMPFAIL) on a
transient failure (retried by the flow). Messages name the file, row or field and say what
to do; they never contain row values, keys or plaintext.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

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


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(), turning known failures into a message and an exit code."""
    try:
        main()
    except PrivflowError as error:
        print(f"privflow: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(EXIT_REFUSED)
    except TransientError as error:
        print(f"privflow: transient failure, safe to retry: {error}", file=sys.stderr)
        sys.exit(EXIT_TRANSIENT)
