"""What `privflow run` shows and where its output goes: the board, the run's log, the summary
of a failed stage's own words (privflow.flows.board, privflow.flows.run_output)."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import pytest

from privflow.flows.board import (
    FAILED,
    RAN,
    RUNNING,
    UP_TO_DATE,
    StageBoard,
    announce,
    say,
)
from privflow.flows.run_output import (
    KEPT_RUN_LOGS,
    cost_note,
    end_run_log,
    last_run,
    new_log_path,
    stage_said,
    weak_model,
)
from privflow.flows.stages import StageFailed
from privflow.progress import PROGRESS_DIR_ENV, read_progress, report_progress

STAGES = ["ingest@churn", "train@churn", "ingest@digits", "train@digits"]


def test_off_a_terminal_each_stage_prints_one_line_when_it_ends():
    out = io.StringIO()
    with StageBoard(STAGES, out, live=False):
        announce("ingest@churn", RUNNING)
        announce("ingest@churn", RAN)
        announce("ingest@digits", UP_TO_DATE)
        announce("train@churn", RUNNING)
        say("another privflow run is in progress here; waiting for it")
        announce("train@churn", FAILED)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("ingest@churn: ran in ") and lines[0].endswith(" s")
    assert lines[1:] == ["ingest@digits: up to date", "another privflow run is in progress here; waiting for it",
                         lines[3]] and lines[3].startswith("train@churn: failed in ")
    announce("train@digits", RAN)  # the board has stopped watching: nothing more is printed
    assert out.getvalue().splitlines() == lines


def test_the_live_table_shows_a_running_train_with_its_epoch_and_epsilon(tmp_path, monkeypatch):
    monkeypatch.setenv(PROGRESS_DIR_ENV, str(tmp_path))
    board = StageBoard(STAGES, io.StringIO(), live=False, progress_dir=tmp_path)
    board.update("ingest@churn", RAN)
    board.update("train@churn", RUNNING)
    assert board.cell("train@churn").startswith("[yellow]running ") and "epoch" not in board.cell("train@churn")
    report_progress("train@churn", epoch=2, epochs=5, epsilon=1.234)
    assert read_progress(tmp_path, "train@churn") == {"epoch": 2, "epochs": 5, "epsilon": 1.234}
    assert "epoch 2/5, ε 1.23" in board.cell("train@churn")
    assert board.cell("ingest@digits") == "[dim]queued[/dim]" and "ran" in board.cell("ingest@churn")
    table = board.table()
    assert [c.header for c in table.columns] == ["stage", "churn", "digits"] and table.row_count == 2


def test_the_stage_every_dataset_shares_shows_its_one_state_under_each_dataset():
    board = StageBoard(["fingerprint", *STAGES], io.StringIO(), live=False)
    board.update("fingerprint", RUNNING)
    board.update("fingerprint", UP_TO_DATE)
    table = board.table()
    assert [c.header for c in table.columns] == ["stage", "churn", "digits"] and table.row_count == 3
    first_row = [list(column.cells)[0] for column in table.columns]
    assert first_row == ["fingerprint", "[dim]up to date[/dim]", "[dim]up to date[/dim]"]


def test_progress_is_written_only_when_a_run_asks_for_it(tmp_path, monkeypatch):
    monkeypatch.delenv(PROGRESS_DIR_ENV, raising=False)
    report_progress("train@churn", epoch=1, epochs=5, epsilon=0.5)  # plain `dvc repro`: nowhere
    assert read_progress(tmp_path, "train@churn") == {} and list(tmp_path.iterdir()) == []


def test_a_failed_stage_is_summed_up_by_its_own_words(tmp_path):
    log = tmp_path / "run.log"
    log.write_text(textwrap.dedent("""\
        Running stage 'train@churn':
        > python -m privflow.stages.train --dataset churn
        privflow: BudgetExceeded: an older refusal of the same stage
        Running stage 'validate@digits':
        Running stage 'train@churn':
        > python -m privflow.stages.train --dataset churn
        12:00:00.000 | INFO    | prefect - something
        privflow: BudgetExceeded: composed epsilon from 2.99 to 5.98, over the cap 3.5
        ERROR: failed to reproduce 'train@churn'
        """))
    assert stage_said(log, "train@churn") == ["privflow: BudgetExceeded: composed epsilon from 2.99 to 5.98, "
                                              "over the cap 3.5"]
    log.write_text("Running stage 'encrypt@churn':\nKilled\n")  # died before it could say anything
    assert stage_said(log, "encrypt@churn") == ["Running stage 'encrypt@churn':", "Killed"]
    log.write_text("12:00:00 | INFO | prefect - Starting temporary server\n")  # DVC refused before the command
    assert stage_said(log, "ingest@churn") == []


def test_run_logs_keep_the_newest_and_never_an_unexpected_failures_traceback(tmp_path):
    """A schedule every few minutes writes a log per run: the oldest go, the newest stay."""
    folder = tmp_path / ".privflow" / "logs"
    folder.mkdir(parents=True)
    names = [f"2026{month:02d}{day:02d}T030000Z-{pid}.log" for month in (1, 2) for day in range(1, 29)
             for pid in range(10)]
    for name in names:
        (folder / name).write_text("x")
    (folder / "train-20250101T000000000000Z.traceback").write_text("frames")  # older than every log
    assert len(names) > KEPT_RUN_LOGS
    new = new_log_path(tmp_path)
    new.write_text("this run")
    kept = sorted(path.name for path in folder.glob("*.log"))
    assert kept == sorted(names)[-(KEPT_RUN_LOGS - 1):] + [new.name]
    assert (folder / "train-20250101T000000000000Z.traceback").exists()


def test_the_last_run_is_said_with_its_start_outcome_and_log(tmp_path):
    """`privflow status`'s line: the newest run log, its last `run ended:` line or none."""
    assert last_run(tmp_path) is None
    folder = tmp_path / ".privflow" / "logs"
    folder.mkdir(parents=True)
    older, newer = folder / "20261207T030000Z-11.log", folder / "20261208T030000Z-12.log"
    older.write_text("Running stage 'ingest@churn':\n")
    end_run_log(older, [])
    assert last_run(tmp_path) == f"2026-12-07 03:00:00 UTC, completed; log {older}"
    newer.write_text("Running stage 'ingest@churn':\nprivflow: DatasetError: churn.csv: source not found\n")
    assert last_run(tmp_path).startswith("2026-12-08 03:00:00 UTC, no outcome recorded (still running, stopped")
    end_run_log(newer, [StageFailed("stage 'ingest@churn' failed", "ingest@churn"),
                        StageFailed("stage 'train@digits' failed", "train@digits")])
    assert last_run(tmp_path) == f"2026-12-08 03:00:00 UTC, failed at ingest@churn, train@digits; log {newer}"
    # the outcome is no stage's word
    assert stage_said(newer, "ingest@churn") == ["privflow: DatasetError: churn.csv: source not found"]


def test_the_log_takes_every_process_output_and_the_board_keeps_the_terminal(tmp_path):
    """fds 1 and 2 go to the log, so a child process (a stage, DVC) writes there too."""
    script = textwrap.dedent(f"""
        import subprocess, sys
        from pathlib import Path
        from privflow.flows.streams import output_to_log
        with output_to_log(Path({str(tmp_path / 'run.log')!r})) as terminal:
            print("from python")
            print("python's stderr", file=sys.stderr)
            subprocess.run(["sh", "-c", "echo from a child; echo child stderr >&2"], check=True)
            terminal.write("board line\\n")
        print("after the run")
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout == "board line\nafter the run\n" and done.stderr == ""
    logged = (tmp_path / "run.log").read_text().splitlines()
    assert sorted(logged) == sorted(["from python", "python's stderr", "from a child", "child stderr"])


def test_verbose_shows_every_process_output_where_it_went_and_copies_it_to_the_log(tmp_path):
    """`--verbose`: stdout and stderr, this process's and a child's, still reach their own
    streams, and the run's log holds all of it, ending with the run's outcome."""
    script = textwrap.dedent(f"""
        import subprocess, sys
        from pathlib import Path
        from privflow.flows.run_output import end_run_log
        from privflow.flows.streams import output_shown_and_logged
        log = Path({str(tmp_path / 'run.log')!r})
        with output_shown_and_logged(log):
            print("from python", flush=True)  # before the child's, however stdout is buffered
            print("python's stderr", file=sys.stderr, flush=True)
            child = "echo from a child; echo child stderr >&2; head -c 200000 /dev/zero | tr '\\\\0' x; echo"
            subprocess.run(["sh", "-c", child], check=True)
        print("after the run")
        end_run_log(log, [])
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    bulk = "x" * 200_000  # longer than a pipe's buffer and a read: nothing is lost or blocks, the line stays whole
    assert done.stdout == f"from python\nfrom a child\n{bulk}\nafter the run\n"
    assert done.stderr == "python's stderr\nchild stderr\n"
    logged = (tmp_path / "run.log").read_text()
    assert logged.endswith("run ended: completed\n") and "after the run" not in logged
    # whole lines, stdout's and stderr's never merged (each print writes its newline apart)
    assert sorted(logged.splitlines()) == sorted(["from python", "python's stderr", "from a child", "child stderr",
                                                  bulk, "run ended: completed"])


SERVICE_RUN = """
import subprocess, sys
from pathlib import Path
from privflow.errors import PrivflowError
from privflow.flows.board import RAN, RUNNING, announce
from privflow.flows.run_output import service_console
try:
    with service_console(Path(sys.argv[1]), None) as service:
        print("DVC: Running stage 'ingest@a'")
        subprocess.run(["sh", "-c", "echo a stage command says; echo its stderr >&2"], check=True)
        announce("ingest@a", RUNNING)
        announce("ingest@a", RAN)
        raise PrivflowError("another privflow run still holds the lock")
except PrivflowError:
    print("ended", service is not None)
"""


@pytest.mark.parametrize("verbose", ["", "1"])
def test_a_run_no_privflow_run_watches_prints_a_line_per_stage_and_logs_the_rest_unless_verbose(tmp_path, verbose):
    """A scheduled or deployed run: on its service's output the log's path, a line per stage and
    a refusal's words; everything DVC and the stage commands print in its log. Verbose: all of it
    on the service's output, and in its log too."""
    import os

    env = {**os.environ, "PRIVFLOW_VERBOSE": verbose}
    done = subprocess.run([sys.executable, "-c", SERVICE_RUN, str(tmp_path)], capture_output=True, text=True,
                          env=env, check=True)
    said = done.stdout.splitlines()
    logs = list((tmp_path / ".privflow" / "logs").glob("*.log"))
    (log,) = logs
    logged = ["DVC: Running stage 'ingest@a'", "a stage command says", "its stderr"]
    if verbose:  # shown as it came, and copied to the log (a refusal before any stage: no outcome line)
        assert said[0] == f"log: {log}" and sorted(said[1:]) == ["DVC: Running stage 'ingest@a'",
                                                                 "a stage command says", "ended False"]
        assert done.stderr == "its stderr\n"
        assert sorted(log.read_text().splitlines()) == sorted([f"log: {log}", *logged])
        return
    assert said[0] == f"log: {log}" and said[1].startswith("ingest@a: ran in ")
    assert said[2:] == ["privflow: another privflow run still holds the lock", "ended True"]
    assert sorted(log.read_text().splitlines()) == sorted(logged)


@pytest.mark.parametrize("interval, note", [
    ([-1.6, 4.6], ", a gap within the test noise"), ([2.6, 6.8], ""), ([-6.0, -0.5], ""),
    ([float("nan")] * 2, "")])  # too few test records to measure
def test_the_summary_notes_a_gap_whose_interval_holds_zero(interval, note):
    assert cost_note({"interval_95": interval}) == note
    assert cost_note(None) == ""


@pytest.mark.parametrize(("outcome", "note"), [
    ("better", ""), ("not measured", ""),
    ("no better", "NO BETTER than always answering 'stays' (0.812)"),
    ("worse", "WORSE than always answering 'stays' (0.812)"),
])
def test_the_summary_warns_when_the_model_does_not_beat_always_answering_the_largest_class(outcome, note):
    evaluation = {"versus_constant": {"outcome": outcome, "class": "stays", "accuracy": 0.8123}}
    assert weak_model(evaluation) == note
    assert weak_model(None) == weak_model({}) == ""  # a report written before the evaluate stage
