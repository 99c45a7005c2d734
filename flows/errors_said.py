"""What a person reads of a failure, on the command line and on a scheduled or deployed run's
service console (privflow.flows.run_output): one line that says what to do, never the frames.
Light on purpose: every command imports it (`privflow --help` included)."""

from __future__ import annotations

import logging
from pathlib import Path

from privflow.errors import EXIT_UNEXPECTED, PrivflowError, describe_unexpected

PROJECT_YAML = ("params.yaml", "dvc.yaml", "dvc.lock")  # read as YAML by privflow itself (schemas say their own)


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


def yaml_error_said(root: Path = Path(".")) -> str | None:
    """Which of the project's YAML files does not parse (or is no mapping), where, and what is wrong (no
    line of it is shown: a settings file may hold paths a user would rather not paste)."""
    import yaml

    for name in PROJECT_YAML:
        try:
            document = yaml.safe_load((root / name).read_text(encoding="utf-8"))
            if document is not None and not isinstance(document, dict):
                return (f"{root / name}: its top level is a {type(document).__name__}, not sections such as "
                        "`datasets:`; compare it with the file `privflow init` writes")
        except OSError:
            continue
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            if (opened := getattr(error, "context_mark", None)) and error.context:  # e.g. where a bracket opened
                where += f" ({error.context} at line {opened.line + 1})"
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            return (f"{root / name}: not valid YAML: {problem}{where}; fix that line (usually an unclosed bracket "
                    "or quote, a tab, or an indent that does not match the lines around it)")
    return None


def error_said(error: Exception, root: Path, label: str) -> tuple[str, int]:
    """One line for a person and the exit status: a refusal's own words (2); a hand-edited YAML
    file of the project that does not parse, where and what to fix (2); else what failed, and
    where its frames (never a value) were written (EXIT_UNEXPECTED)."""
    if isinstance(error, PrivflowError):
        return str(error), 2
    if (said := yaml_error_said(root)) is not None:
        return said, 2
    return describe_unexpected(error, label), EXIT_UNEXPECTED
