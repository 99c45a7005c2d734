"""Tracebacks kept from the logs a person reads: `privflow run`'s (its console and its log) and
a scheduled or deployed run's service console (privflow.flows.run_output)."""

from __future__ import annotations

import logging


class _WithoutTraceback(logging.Filter):
    """Prefect logs a failed task's and flow's traceback with the error; the user needs the
    error (the stage said why) and the next step, not the orchestrator's frames."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def quiet_tracebacks() -> None:
    """Every logging handler set up so far (Prefect's, after its import) drops tracebacks."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if not any(isinstance(f, _WithoutTraceback) for f in handler.filters):
                handler.addFilter(_WithoutTraceback())
