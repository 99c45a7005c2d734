"""The `privflow` command line, by audience: whoever runs the pipeline (runs), the data owner
(data_owner), the key custodian (keys), the auditor (budget)."""

from __future__ import annotations

from pathlib import Path

from privflow.flows.cli import budget, data_owner, keys, runs
from privflow.flows.cli.common import app, console, ensure_keyring, one_line_summaries
from privflow.flows.errors_said import error_said

__all__ = ["app", "ensure_keyring", "main"]

for command in (runs.init, runs.run, runs.serve, runs.status, runs.repair, runs.report, runs.predict, runs.join,
                data_owner.quarantine):
    app.command()(command)
app.add_typer(data_owner.schema_app, name="schema")
app.add_typer(keys.app, name="keys")
app.add_typer(budget.app, name="budget")
one_line_summaries(app)


def main() -> None:
    try:
        app()
    except Exception as error:  # noqa: BLE001 (never a raw traceback: one line, the frames in a file)
        said, status = error_said(error, Path("."), "cli")
        console.print(f"privflow: {said}", style="red", highlight=False)
        raise SystemExit(status) from None
