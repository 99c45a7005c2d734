"""Commands for whoever runs the pipeline: run, serve, status, report, predict."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import typer
from rich.table import Table

from privflow.catalog import REPORT_FILES, REPORT_JSON
from privflow.errors import PrivflowError
from privflow.flows.cli.common import ONE_DATASET, console, ensure_keyring, one_dataset


def init(folder: Path = typer.Argument(Path("."), help="the project folder: empty, new, or an existing repository"),
         demo: bool = typer.Option(False, "--demo", help="add the demo datasets (no network needed)")) -> None:
    """Make a privflow project here: dvc.yaml, params.yaml, schemas/, git and DVC; never overwrites a file."""
    from privflow.scaffold import init_project

    for line in init_project(folder, demo):
        console.print(line, highlight=False)
    console.print(f"next: {'cd ' + str(folder) + ' && ' if folder != Path('.') else ''}"
                  + ("privflow run" if demo else "add your dataset under `datasets:` in params.yaml (its source "
                     "and a schema: copy schemas/example.yaml or `privflow schema draft SOURCE`), then privflow run"),
                  highlight=False)


def run(root: Path = Path("."),
        dataset: list[str] = typer.Option(None, "--dataset", "-d", help="only this dataset (repeatable)"),
        workers: int = typer.Option(1, min=1, help="> 1: datasets side by side on a local Dask cluster"),
        dask_address: str = typer.Option(None, help="or on an existing Dask cluster (tcp://host:8786)"),
        plan: bool = typer.Option(False, "--plan", help="only say what would run, why, and what it would spend"),
        yes: bool = typer.Option(False, "--yes", "-y", help="spend privacy budget without asking (schedules, CI)"),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="show DVC's, Prefect's and the stages' output live (the run's log still gets it)")) -> None:
    """Run the whole pipeline for every dataset, or the named ones (up-to-date stages are skipped).

    First it says which stages will run and why, and what each train will spend of its budget;
    on a terminal a run that spends budget asks once, unless --yes. While it runs: a live table
    on a terminal, one line per stage elsewhere; the full output goes to .privflow/logs/."""
    from privflow.flows.run_output import stopped_datasets, summary
    from privflow.flows.cli.plan_view import announce_code_spending, show_plan
    from privflow.flows.plan import stale_stages, unreadable_sources
    from privflow.flows.cli.pipeline_run import run_flow, say_lost_sources, stop_unless_all_ran
    from privflow.flows.stages import FINGERPRINT_STAGE, read_dag, record_fingerprints, stages_for
    from privflow.preflight import check_dataset
    from privflow.project import refresh_dvc_yaml, refreshed_note
    from privflow.settings import dataset_names, load_settings

    chosen = dataset or dataset_names(root / "params.yaml")
    refreshed = refresh_dvc_yaml(root)
    if refreshed:
        console.print(refreshed_note(refreshed), highlight=False)
    for name in chosen:  # before Prefect starts: a schema or settings mistake costs seconds, not a run
        check_dataset(load_settings(name, root / "params.yaml"))
    if not plan:
        ensure_keyring(root)  # a refusal here comes before any server starts; the fingerprints need it
    dag = read_dag(root, with_status=True)
    lost = {} if plan else unreadable_sources(chosen, dag)
    if lost:  # their ingest would refuse: the others run, these are said now and again at the end
        say_lost_sources(lost)
        if len(lost) == len(chosen):
            stop_unless_all_ran(lost, [], None, verbose)
        dataset = chosen = [name for name in chosen if name not in lost]
    stale = stale_stages(root, chosen, dag)
    server = None
    if stale and not plan and not (workers > 1 or dask_address):
        from privflow.flows.server import warm_temporary_server  # Prefect: only when a flow will run

        server = warm_temporary_server()  # it starts while the plan is worked out and shown (the prompt too)
    planned = show_plan(root, stale, dag)
    if plan:
        return
    if planned:
        announce_code_spending(root, planned)
        spends = [p for p in planned if p.epsilon is not None]
        if spends and not yes and sys.stdin.isatty() and not typer.confirm(
                f"spend privacy budget in {len(spends)} train stage(s)?", default=True):
            raise typer.Exit(1)
        ran, failures, log = run_flow(root, dataset or None, stages_for(dag.order, chosen), workers, dask_address,
                                      verbose, server)
    else:  # nothing stale: like a build tool's no-op, no flow run (Prefect is not even started)
        ran, failures, log = set(), [], None
        if FINGERPRINT_STAGE in dag.stale:
            record_fingerprints(root)
    if not ran and not failures:
        console.print("stages run: none (all up to date)", highlight=False)
    stopped = stopped_datasets(failures, chosen)
    for line in summary(root, dag, [name for name in chosen if name not in stopped], ran):
        console.print(line, highlight=False)
    stop_unless_all_ran(lost, failures, log, verbose, chosen)


class QueuedRunsSaidOnChange(logging.Filter):
    """Prefect's runner says "N scheduled runs skipped (at capacity)" at every poll (10 s) while a
    run is in progress: a schedule that fires faster than its runs end is worth a line when the
    number of waiting runs changes, not six a minute for as long as a training lasts."""

    SKIPPED = "%d scheduled runs skipped (at capacity)"  # prefect.runner._scheduled_run_poller's message

    def __init__(self) -> None:
        super().__init__()
        self.said: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != self.SKIPPED:
            return True
        said, self.said = self.said, record.getMessage()
        return said != self.said


def serve(root: Path = Path("."),
          cron: str = typer.Option(None, help='cron schedule, e.g. "0 3 * * *" (03:00 every day)'),
          interval: int = typer.Option(None, min=1, help="or: every N seconds"),
          name: str = typer.Option("privflow-scheduled", help="deployment name"),
          verbose: bool = typer.Option(False, "--verbose", "-v", help="each run's full output (DVC's, Prefect's and "
                                       "the stages') here as well as in its log under .privflow/logs/")) -> None:
    """Serve the pipeline on a schedule (Prefect `flow.serve`); runs until stopped (Ctrl-C, or
    SIGTERM as systemd, docker or kubernetes send it: either pauses the deployment and stops the server).

    Each scheduled run is an ordinary run: stages that are up to date are skipped and charge
    nothing; a run that finds another in progress waits for it. Each prints what `privflow run`
    prints off a terminal: a line per stage, then per dataset what it spent and left.
    """
    from privflow.flows.pipeline import pipeline
    from privflow.flows.run_output import VERBOSE_ENV
    from privflow.flows.server import prefect_api, stop_runs_before_the_server

    if (cron is None) == (interval is None):
        raise PrivflowError("give exactly one of --cron or --interval")
    ensure_keyring(root)
    if verbose:  # the runs are processes of their own; they inherit it
        os.environ[VERBOSE_ENV] = "1"
    stop_runs_before_the_server()
    with prefect_api(root / ".privflow" / "prefect-server.log") as url:
        console.print(f"serving {root.resolve()} as deployment '{name}' on {url}: "
                      + (f"cron {cron!r}" if cron else f"every {interval} s"))
        # Prefect's SIGTERM handler calls the async Runner.stop without awaiting it (it pauses the
        # deployment all the same): its "never awaited" warning is nothing a user can act on
        warnings.filterwarnings("ignore", "coroutine 'Runner.astop' was never awaited", RuntimeWarning)
        logging.getLogger("prefect.runner").addFilter(QueuedRunsSaidOnChange())
        # one run at a time: a schedule that fires while a run is in progress waits in Prefect's
        # queue, not as a started process (about 360 MB each) blocked on the project lock; with a
        # short interval and a slow run those piled up until the machine ran out of memory
        pipeline.serve(name=name, cron=cron, interval=interval, parameters={"root": str(root.resolve())}, limit=1)


def join(dataset: str = ONE_DATASET) -> None:
    """Join a multi-node DP training run (train.nodes > 1) from this host: start it here while the
    train stage runs on the host at train.rendezvous. This host needs the same params.yaml, the
    encrypt stage's sealed splits (`dvc pull`) and a keyring that opens them; it charges nothing."""
    from privflow.training.distributed import join as join_run

    code = join_run(one_dataset(dataset))
    if code != 0:
        raise PrivflowError(f"this node's training processes failed (torchrun exit {code}); the train stage's "
                            "node says why the run stopped")
    console.print("joined: this node's processes finished their share of the run", highlight=False)


def status(root: Path = Path(".")) -> None:
    """Per dataset: which stages are out of date, the latest report, and the privacy budget; then
    when the last run (yours, scheduled or deployed) started, how it ended, and its log."""
    from privflow.artifacts import read_json
    from privflow.budget import budget_name
    from privflow.flows.plan import unreadable_sources
    from privflow.flows.run_output import last_run
    from privflow.flows.stages import dataset_of, read_dag
    from privflow.privacy.ledger import PrivacyLedger
    from privflow.settings import dataset_names, ledger_location, load_settings

    dag = read_dag(root, with_status=True)
    stale, order = dag.stale, dag.order
    table = Table("dataset", "stages with changed inputs", "latest report", "ε spent / cap", title=str(root.resolve()))
    for name in dataset_names(root / "params.yaml"):
        settings = load_settings(name, root / "params.yaml")
        stages = [s.split("@")[0] for s in order if dataset_of(s) == name and s in stale]
        report_json = dag.reports_dir(name) / REPORT_JSON
        latest = read_json(report_json) if report_json.exists() else None
        budget = PrivacyLedger(ledger_location(settings)).budget(budget_name(settings), settings.privacy.epsilon_cap,
                                                                 from_memo=True)
        table.add_row(name, ", ".join(stages) or "none",
                      f"{latest['generated_at']} (run {latest['run_id'][:12]})" if latest else "none yet",
                      f"{budget.spent:.3f} / {budget.cap:g} ({budget.runs} run(s))")
    console.print(table)
    console.print(f"last run: {last_run(root) or 'none yet'}", highlight=False)
    for name, why in unreadable_sources(dataset_names(root / "params.yaml"), dag).items():
        console.print(f"{name}: its source cannot be read: {why}", style="yellow", highlight=False)


def repair(root: Path = Path(".")) -> None:
    """Mend what a killed `dvc repro` can leave cut short: dvc.lock (DVC then refuses every run
    with "'./dvc.lock' validation failed", or misreads it) gets back the copy taken as the
    last stage started; DVC's path-lock file (.dvc/tmp/rwlock) an empty one."""
    from privflow.flows.dvc_repairs import repair_lock, repair_rwlock
    from privflow.flows.stages import open_repo

    with open_repo(root, mend=False) as repo:
        mended = [m for m in (repair_lock(repo), repair_rwlock(repo)) if m]
    for line in mended or [f"{root / 'dvc.lock'} and DVC's path locks load; nothing to mend"]:
        console.print(line, highlight=False)


def report(out: Path = typer.Option(None, help="copy the report (HTML, Markdown, JSON) here"),
           open_browser: bool = typer.Option(False, "--open", help="open it in the browser"),
           dataset: str = ONE_DATASET) -> None:
    """Rebuild the run index and show where the latest report is; optionally copy or open it."""
    import shutil
    import webbrowser

    from privflow.flows.stages import reports_dir
    from privflow.reporting.archive import archive_run

    reports = reports_dir(Path("."), one_dataset(dataset))
    html, _, document = REPORT_FILES
    if not (reports / document).exists():
        raise PrivflowError(f"{reports / document}: no report yet; run `privflow run` first")
    index = archive_run(reports)
    target = reports
    if out:
        out.mkdir(parents=True, exist_ok=True)
        for name in REPORT_FILES:
            shutil.copyfile(reports / name, out / name)
        target = out
    console.print(f"report: {(target / html).resolve()}; all runs: {index.resolve()}")
    if open_browser:
        webbrowser.open((target / html).resolve().as_uri())


def predict(source: Path = typer.Argument(..., help="records to score: .csv, .csv.gz, .parquet or a folder"),
            dataset: str = ONE_DATASET,
            out: Path = typer.Option(None, help="write the predictions here (CSV); default: standard output")) -> None:
    """Score records with the dataset's compressed model; records failing its schema are named, not scored."""
    import contextlib
    import csv
    import sys

    from privflow.data.schema_file import load_schema
    from privflow.flows.stages import stage_outputs
    from privflow.modeling.predict import score
    from privflow.settings import load_settings

    if not source.exists():
        raise PrivflowError(f"{source}: no such file or folder; give the records to score (.csv, .csv.gz, "
                            ".parquet, or a folder of them)")
    settings = load_settings(one_dataset(dataset))
    model_dir = stage_outputs(Path("."), f"compress@{settings.dataset.name}")[0]
    scored = score(source, load_schema(settings.validate_.schema_file), settings.ingest, model_dir)
    for failure in scored.failures:
        typer.echo(f"not scored: {failure.describe(scored.spans, str(source))}", err=True)
    target = open(out, "w", newline="", encoding="utf-8") if out else contextlib.nullcontext(sys.stdout)
    with target as handle:
        csv.writer(handle, lineterminator="\n").writerows(scored.lines())
    typer.echo(f"{len(scored.rows)} record(s) scored, {len({f.row for f in scored.failures})} not scored", err=True)
    warning = weak_model_warning(settings.dataset.name, model_dir)
    if warning:
        typer.echo(warning, err=True)


def weak_model_warning(dataset: str, model_dir: Path) -> str:
    """Said beside the predictions when the served model did not beat always answering the most
    frequent class on its test split: its answers are then no better than that guess."""
    from privflow.artifacts import read_json
    from privflow.catalog import SERVING_CARD
    from privflow.flows.run_output import weak_model
    from privflow.flows.stages import read_dag

    # none in a dvc.yaml written before the stage (the next `privflow run` rewrites it), none run yet
    evaluated = read_dag(Path(".")).outputs.get(f"evaluate@{dataset}", [])
    if not evaluated or not evaluated[0].is_file():
        return ""
    evaluation = read_json(evaluated[0])
    if evaluation.get("run_id") != read_json(model_dir / SERVING_CARD).get("run_id"):
        return ""  # figures of another model: the pipeline has not evaluated this one yet
    said = weak_model(evaluation)
    return f"warning: on its test split this model did {said}; see the dataset's report" if said else ""
