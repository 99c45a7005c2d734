"""Where a run's output goes: the full DVC/Prefect/stage stream into `.privflow/logs/<run>.log`
(stages print counts and names, never a value), the person sees the board and a summary."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from privflow.artifacts import read_json
from privflow.catalog import REPORT_FILES, REPORT_JSON
from privflow.errors import LOG_DIR
from privflow.flows.board import StageBoard, watched
from privflow.flows.errors_said import error_said, quiet_tracebacks
from privflow.flows.stages import Dag, StageFailed, dataset_of, read_dag
from privflow.flows.streams import output_shown_and_logged, output_to_log

VERBOSE_ENV = "PRIVFLOW_VERBOSE"  # "1": a scheduled or deployed run prints its full stream, as `privflow run -v`


KEPT_RUN_LOGS = 500  # a schedule every few minutes would fill the folder; the audit trail is the ledger and reports
RUN_LOG_TIME = "%Y%m%dT%H%M%SZ"  # a run log's name: when it started (UTC), then the pid


def run_logs(root: Path) -> list[Path]:
    """The project's run logs, oldest first (the unexpected failures' `.traceback` files are none)."""
    return sorted((root / LOG_DIR).glob("*T*Z-*.log"))


def new_log_path(root: Path) -> Path:
    """`.privflow/logs/<UTC time>-<pid>.log`: one per run, sorted by when it started. The oldest
    go once there are KEPT_RUN_LOGS."""
    (root / LOG_DIR).mkdir(parents=True, exist_ok=True)
    logs = run_logs(root)
    for old in logs[:max(0, len(logs) - KEPT_RUN_LOGS + 1)]:
        old.unlink(missing_ok=True)
    return root / LOG_DIR / f"{time.strftime(RUN_LOG_TIME, time.gmtime())}-{os.getpid()}.log"


RUN_ENDED = "run ended: "  # a run log's last line, once the run ended (never "privflow: ", which stage_said reads)


def end_run_log(log: Path, failures: list[StageFailed]) -> None:
    """The run's outcome as its log's last line, for `privflow status`."""
    stages = [failure.stage for failure in failures]
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"{RUN_ENDED}{'failed at ' + ', '.join(stages) if stages else 'completed'}\n")


def last_run(root: Path) -> str | None:
    """When the newest run log's run started, how it ended, and the log; None if no run left one."""
    logs = run_logs(root)
    if not logs:
        return None
    started = time.strptime(logs[-1].name.partition("-")[0], RUN_LOG_TIME)
    ended = [line for line in logs[-1].read_text(encoding="utf-8", errors="replace").splitlines()
             if line.startswith(RUN_ENDED)]
    outcome = ended[-1].removeprefix(RUN_ENDED) if ended else "no outcome recorded (still running, stopped, or " \
        "refused before any stage: see its log)"
    return f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', started)}, {outcome}; log {logs[-1]}"


def stage_said(log: Path, stage: str) -> list[str]:
    """What a failed stage told its user (its `privflow:` lines), from its part of the log; the
    end of that part when it said nothing (it died before it could); nothing when its command
    never started (DVC refused first, and the failure's own message says why)."""
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    marker = f"Running stage '{stage}'"
    starts = [i for i, line in enumerate(lines) if marker in line]
    if not starts:
        return []
    part = lines[starts[-1]:]
    return [line for line in part if line.startswith("privflow: ")] or part[-15:]


def stopped_datasets(failures: list[StageFailed], chosen: Sequence[str]) -> list[str]:
    """The datasets the failures stopped: each failed stage's own, or every one if the stage
    that failed was one they share (the fingerprints)."""
    names = list(dict.fromkeys(dataset_of(failure.stage) for failure in failures))
    return list(chosen) if "" in names else names


def failure_lines(failures: list[StageFailed], log: Path | None) -> Iterator[str]:
    """Each failed stage's own words from the run's log (none without one: the stream was shown
    live), then the failure itself."""
    for failure in failures:
        yield from ([] if log is None else stage_said(log, failure.stage))
        yield f"privflow: {failure}"


def cost_note(cost: dict | None) -> str:
    """A note when the paired 95 % interval of what DP cost holds 0, i.e. the gap is the test
    split's noise (a user would read a negative gap as DP gaining accuracy)."""
    low, high = cost["interval_95"] if cost else (float("nan"),) * 2
    return ", a gap within the test noise" if low <= 0 <= high else ""


def weak_model(evaluation: dict | None) -> str:
    """A warning when the model does not beat always answering the most frequent class on its
    test split (the evaluate stage's figures): its accuracy alone would read as learning."""
    constant = (evaluation or {}).get("versus_constant")
    if not constant or constant["outcome"] in ("better", "not measured"):
        return ""
    return f"{constant['outcome'].upper()} than always answering '{constant['class']}' ({constant['accuracy']:.3f})"


def summary(root: Path, dag: Dag, datasets: list[str], ran: set[str]) -> list[str]:
    """Per dataset: what ran, the epsilon this run spent, what is left, accuracy, the report."""
    lines = []
    for name in datasets:
        stages = [s.partition("@")[0] for s in dag.order if dataset_of(s) == name and s in ran]
        report = dag.reports_dir(name) / REPORT_JSON
        if not report.exists():
            lines.append(f"{name}: ran {', '.join(stages) or 'nothing'}; no report yet")
            continue
        context = read_json(report)
        training, budget = context["training"], context["budget"]
        spent = training["budget"]["this_run"] if f"train@{name}" in ran else 0.0
        accuracy = training["accuracy"]
        baseline = accuracy.get("non_private_baseline")
        weak = weak_model(context.get("evaluation"))
        lines.append(f"{name}: ran {', '.join(stages) or 'nothing (up to date)'}; epsilon spent {spent:.3f}, "
                     f"{budget['remaining']:.3f} of {budget['cap']:g} left (budget {training['budget']['name']}); "
                     f"accuracy {accuracy['private']:.3f}"
                     + (f" (non-private {baseline:.3f}{cost_note(training.get('privacy_cost'))})"
                        if baseline is not None else "")
                     + (f"; {weak}" if weak else "")
                     + f"; report {report.with_name(REPORT_FILES[0])}")
    return lines


@dataclass
class ServiceConsole:
    """What a scheduled or deployed run prints where its service's output goes (`privflow serve`,
    a Prefect worker, their journal): what `privflow run` prints off a terminal. The log's path,
    one line per stage as it ends, then per dataset the summary, or a failed stage's own words
    and what to do; the full stream is in the run's log."""

    root: Path
    log: Path
    board: StageBoard

    def print(self, line: str) -> None:
        self.board.console.print(line, markup=False)

    def finished(self, datasets: list[str] | None, ran: dict[str, bool], failures: list[StageFailed]) -> None:
        dag = read_dag(self.root)
        chosen = [name for name in dict.fromkeys(dataset_of(s) for s in dag.order if dataset_of(s))
                  if datasets is None or name in datasets]
        stopped = stopped_datasets(failures, chosen)
        for line in summary(self.root, dag, [name for name in chosen if name not in stopped],
                            {stage for stage, did in ran.items() if did}):
            self.print(line)
        for line in failure_lines(failures, self.log):
            self.print(line)
        end_run_log(self.log, failures)
        if failures:
            self.print(f"next: fix what {', '.join(f.stage for f in failures)} said above (full output: {self.log}); "
                       "the next run, scheduled or `privflow run`, takes it up again; stages that finished do not run again")


def failures_of(failed: StageFailed) -> list[StageFailed]:
    """DatasetsFailed's failures (the other datasets ran), or the fingerprints' own, every dataset's."""
    return getattr(failed, "failures", [failed])


@contextmanager
def _shown_and_logged_run(log: Path) -> Iterator[None]:
    """A verbose service run: its full stream shown and copied to its log, whose last line, once
    the copies ended, is the run's outcome (none for a refusal before any stage, as otherwise)."""
    outcome: list[StageFailed] | None = None
    try:
        with output_shown_and_logged(log):
            print(f"log: {log}", flush=True)
            try:
                yield
            except StageFailed as failed:
                outcome = failures_of(failed)
                raise
            outcome = []
    finally:
        if outcome is not None:
            end_run_log(log, outcome)


@contextmanager
def service_console(root: Path, datasets: list[str] | None) -> Iterator[ServiceConsole | None]:
    """A run that Prefect started in a process of its own (no `privflow run` watches it) sends its
    full stream to a log of its own, as `privflow run` does, and prints a line per stage on its
    service's output; a failure ends it with one line that says what to do (Prefect's own line
    follows, its frames kept off). None when `privflow run` watches this run, or
    $PRIVFLOW_VERBOSE asks for the full stream (then shown, and copied to the run's log)."""
    if watched():
        yield None
        return
    log = new_log_path(root).resolve()  # a service's working folder is not where its reader stands
    if os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
        with _shown_and_logged_run(log):
            yield None
        return
    quiet_tracebacks()
    with output_to_log(log) as terminal, StageBoard([], terminal, live=False) as board:
        service = ServiceConsole(root, log, board)
        service.print(f"log: {log}")
        try:
            yield service
        except StageFailed as failed:  # DatasetsFailed: the others ran; else the fingerprints, every dataset's
            service.finished(datasets, getattr(failed, "ran", {}), failures_of(failed))
            raise
        except Exception as error:  # a refusal before any stage (settings, the project's lock), or a bug
            service.print(f"privflow: {error_said(error, root, 'flow')[0]}")
            raise
