"""What `privflow serve` keeps of Prefect's runner lines: the queue of scheduled runs said when it
changes, not at every poll."""

from __future__ import annotations

import inspect
import logging

from prefect.logging import get_logger
from prefect.runner import _scheduled_run_poller

from privflow.flows.cli.runs import QueuedRunsSaidOnChange


def test_prefect_still_says_skipped_runs_in_the_words_the_filter_knows():
    """An upgrade of Prefect that rewords the line would let it through at every poll again."""
    source = inspect.getsource(_scheduled_run_poller)
    assert f'"{QueuedRunsSaidOnChange.SKIPPED}", skipped_count' in source
    assert 'get_logger("runner")' in source


def test_waiting_runs_are_said_when_their_number_changes(caplog):
    runner = get_logger("runner")  # the poller's own logger
    quiet = QueuedRunsSaidOnChange()
    runner.addFilter(quiet)
    try:
        with caplog.at_level(logging.INFO, logger="prefect.runner"):
            for waiting in (1, 1, 1, 2, 2, 1, 1):
                runner.info(QueuedRunsSaidOnChange.SKIPPED, waiting)
            runner.info("Runner 'privflow-scheduled' submitting flow run 'abc'")
            runner.info("Runner 'privflow-scheduled' submitting flow run 'abc'")  # other lines: all kept
    finally:
        runner.removeFilter(quiet)
    assert [record.getMessage() for record in caplog.records] == [
        "1 scheduled runs skipped (at capacity)", "2 scheduled runs skipped (at capacity)",
        "1 scheduled runs skipped (at capacity)"] + ["Runner 'privflow-scheduled' submitting flow run 'abc'"] * 2
