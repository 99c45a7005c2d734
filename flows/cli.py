"""The `privflow` command line."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

import privflow.flows  # noqa: F401  (sets Prefect's embedded defaults before Prefect loads)
from privflow.errors import PrivflowError
from privflow.crypto.keys import Keyring
from privflow.privacy.ledger import PrivacyLedger
from privflow.settings import dataset_names, keyring_path, ledger_location, load_settings

app = typer.Typer(help="Train models on sensitive data under differential privacy, with an audit trail.")
keys_app = typer.Typer(help="Key-encryption keys of the local keyring.")
budget_app = typer.Typer(help="The privacy budget ledger.")
app.add_typer(keys_app, name="keys")
app.add_typer(budget_app, name="budget")
schema_app = typer.Typer(help="For the data owner: schema files.")
app.add_typer(schema_app, name="schema")
console = Console()


DATASET = typer.Option(None, "--dataset", "-d",
                       help="a dataset of params.yaml; needed when it declares several")
EVERY_DATASET = typer.Option(None, "--dataset", "-d", help="only this dataset of params.yaml (default: every one)")


def _chosen(dataset: str | None) -> list:
    """Settings of the named dataset, or of every declared dataset."""
    return [load_settings(name) for name in ([dataset] if dataset else dataset_names())]


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


def ensure_keyring(root: Path) -> None:
    """The project's first run makes the keyring; a later run that finds it gone refuses:
    sealed artifacts exist that only the lost keyring opens, and the ledger's entries are
    authenticated under it. Restoring it is the fix, never a new empty one."""
    path = keyring_path()
    if path.exists():
        return
    sealed = next((p for p in (root / "artifacts").rglob("*.sealed")), None) if (root / "artifacts").exists() else None
    if sealed is not None:
        raise PrivflowError(f"{path}: no keyring, but this project holds data sealed under one (e.g. {sealed}); "
                            "restore the keyring from its backup or set PRIVFLOW_KEYRING to it. `privflow keys "
                            "init` would make a new, empty one that opens none of it")
    keyring = Keyring.open(path)
    console.print(f"created the keyring {path} (primary KEK {keyring.keks.primary().kek_id}); back it up: "
                  "without it, sealed data cannot be opened", highlight=False)


def _one_dataset(dataset: str | None) -> str:
    """The named dataset, or the only one declared; several and none named is a clear error."""
    return load_settings(dataset).dataset.name


@app.command()
def run(root: Path = Path("."),
        dataset: list[str] = typer.Option(None, "--dataset", "-d", help="only this dataset (repeatable)"),
        workers: int = typer.Option(1, min=1, help="> 1: datasets side by side on a local Dask cluster"),
        dask_address: str = typer.Option(None, help="or on an existing Dask cluster (tcp://host:8786)")) -> None:
    """Run the whole pipeline for every dataset, or the named ones (up-to-date stages are skipped)."""
    from privflow.preflight import check_dataset

    chosen = dataset or dataset_names(root / "params.yaml")
    for name in chosen:  # before Prefect starts: a schema or settings mistake costs seconds, not a run
        check_dataset(load_settings(name, root / "params.yaml"))
    ensure_keyring(root)

    from privflow.flows.pipeline import dataset_of, pipeline, reports_dir
    from privflow.flows.stages import StageFailed

    quiet_tracebacks()
    flow = pipeline
    if workers > 1 or dask_address:
        from prefect_dask import DaskTaskRunner

        runner = DaskTaskRunner(address=dask_address) if dask_address else DaskTaskRunner(
            cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})
        flow = pipeline.with_options(task_runner=runner)
    try:
        ran = flow(str(root), dataset or None, side_by_side=workers > 1 or bool(dask_address))
    except StageFailed as failure:
        console.print(f"[red]privflow: {failure}[/red]")
        console.print(f"next: fix what stage {failure.stage} printed above, then `privflow run -d "
                      f"{failure.stage.partition('@')[2]}` again; stages that finished are not run again")
        raise typer.Exit(2) from None
    console.print(f"stages run: {[s for s, r in ran.items() if r] or 'none (all up to date)'}")
    for name in dict.fromkeys(dataset_of(s) for s in ran):
        console.print(f"report of {name}: [bold]{reports_dir(root, name) / 'report.html'}[/bold]")


@app.command()
def serve(root: Path = Path("."),
          cron: str = typer.Option(None, help='cron schedule, e.g. "0 3 * * *" (03:00 every day)'),
          interval: int = typer.Option(None, min=1, help="or: every N seconds"),
          name: str = typer.Option("privflow-scheduled", help="deployment name")) -> None:
    """Serve the pipeline on a schedule (Prefect `flow.serve`); runs until stopped (Ctrl-C).

    Each scheduled run is an ordinary run: stages that are up to date are skipped and charge
    nothing; a run that finds another in progress waits for it.
    """
    from privflow.flows.pipeline import pipeline
    from privflow.flows.server import prefect_api

    if (cron is None) == (interval is None):
        raise PrivflowError("give exactly one of --cron or --interval")
    ensure_keyring(root)
    with prefect_api(root / ".privflow" / "prefect-server.log") as url:
        console.print(f"serving {root.resolve()} as deployment '{name}' on {url}: "
                      + (f"cron {cron!r}" if cron else f"every {interval} s"))
        # one run at a time: a schedule that fires while a run is in progress waits in Prefect's
        # queue, not as a started process (about 360 MB each) blocked on the project lock; with a
        # short interval and a slow run those piled up until the machine ran out of memory
        pipeline.serve(name=name, cron=cron, interval=interval, parameters={"root": str(root.resolve())}, limit=1)


@app.command()
def status(root: Path = Path(".")) -> None:
    """Per dataset: which stages are out of date, the latest report, and the privacy budget."""
    from dvc.repo import Repo

    from privflow.artifacts import read_json
    from privflow.budget import budget_name
    from privflow.flows.pipeline import dataset_of, reports_dir
    from privflow.flows.stages import stage_order

    with Repo(str(root)) as repo:
        stale = {name.split(":")[-1] for name in repo.status()}
    table = Table("dataset", "stages with changed inputs", "latest report", "ε spent / cap", title=str(root.resolve()))
    for name in dataset_names(root / "params.yaml"):
        settings = load_settings(name, root / "params.yaml")
        stages = [s.split("@")[0] for s in stage_order(root) if dataset_of(s) == name and s in stale]
        report_json = reports_dir(root, name) / "report.json"
        latest = read_json(report_json) if report_json.exists() else None
        budget = PrivacyLedger(ledger_location(settings)).budget(budget_name(settings), settings.privacy.epsilon_cap)
        table.add_row(name, ", ".join(stages) or "none",
                      f"{latest['generated_at']} (run {latest['run_id'][:12]})" if latest else "none yet",
                      f"{budget.spent:.3f} / {budget.cap:g} ({budget.runs} run(s))")
    console.print(table)


@app.command()
def report(out: Path = typer.Option(None, help="copy the report (HTML, Markdown, JSON) here"),
           open_browser: bool = typer.Option(False, "--open", help="open it in the browser"),
           dataset: str = DATASET) -> None:
    """Rebuild the run index and show where the latest report is; optionally copy or open it."""
    import shutil
    import webbrowser

    from privflow.stages.report import archive_run
    from privflow.flows.pipeline import reports_dir

    reports = reports_dir(Path("."), _one_dataset(dataset))
    if not (reports / "report.json").exists():
        raise PrivflowError(f"{reports}/report.json: no report yet; run `privflow run` first")
    index = archive_run(reports)
    target = reports
    if out:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("report.html", "report.md", "report.json"):
            shutil.copyfile(reports / name, out / name)
        target = out
    console.print(f"report: [bold]{(target / 'report.html').resolve()}[/bold]; all runs: {index.resolve()}")
    if open_browser:
        webbrowser.open((target / "report.html").resolve().as_uri())


@app.command()
def quarantine(values: bool = typer.Option(False, "--values", help="also show the rejected values (sensitive)"),
               dataset: str = DATASET) -> None:
    """For the data owner: every quarantined row with file, row, column and failed check."""
    from privflow.artifacts import open_vault
    from privflow.stages.encrypt import read_quarantine
    from privflow.data.records import RowFailure
    from privflow.flows.stages import stage_outputs

    name = _one_dataset(dataset)
    snapshot_dir, data_dir = (stage_outputs(Path("."), f"{stage}@{name}")[0] for stage in ("ingest", "encrypt"))
    source, spans, records = read_quarantine(open_vault(), snapshot_dir, data_dir)
    if values:
        console.print("[yellow]showing quarantined values: sensitive data on this terminal[/yellow]")
    for record in records:
        for column, check in record["failures"]:
            line = RowFailure(record["row"], column, check).describe(spans, source)
            shown = (record["values"] or {}).get(column, record["text"]) if values else None
            typer.echo(line + (f" (value {shown!r})" if shown is not None else ""))  # unwrapped, greppable
    console.print(f"{len(records)} quarantined or unparseable record(s)")


@app.command()
def predict(source: Path = typer.Argument(..., help="records to score: .csv, .csv.gz, .parquet or a folder"),
            dataset: str = DATASET,
            out: Path = typer.Option(None, help="write the predictions here (CSV); default: standard output")) -> None:
    """Score records with the dataset's compressed model; records failing its schema are named, not scored."""
    import contextlib
    import csv
    import sys

    from privflow.modeling.predict import score
    from privflow.data.schema import load_schema
    from privflow.flows.stages import stage_outputs

    if not source.exists():
        raise PrivflowError(f"{source}: no such file or folder; give the records to score (.csv, .csv.gz, "
                            ".parquet, or a folder of them)")
    settings = load_settings(_one_dataset(dataset))
    model_dir = stage_outputs(Path("."), f"compress@{settings.dataset.name}")[0]
    scored = score(source, load_schema(settings.validate_.schema_file), settings.ingest, model_dir)
    for failure in scored.failures:
        typer.echo(f"not scored: {failure.describe(scored.spans, str(source))}", err=True)
    target = open(out, "w", newline="", encoding="utf-8") if out else contextlib.nullcontext(sys.stdout)
    with target as handle:
        csv.writer(handle, lineterminator="\n").writerows(scored.lines())
    typer.echo(f"{len(scored.rows)} record(s) scored, {len({f.row for f in scored.failures})} not scored", err=True)


@schema_app.command("draft")
def schema_draft(source: Path = typer.Argument(..., help="the export: .csv, .csv.gz, .parquet or a folder of them"),
                 out: Path = typer.Option(None, help="where to write the draft (default: schemas/<name>.yaml)"),
                 name: str = typer.Option(None, help="the dataset's name (default: the source's file name)"),
                 delimiter: str = typer.Option(",", help="the CSV field delimiter"),
                 encoding: str = typer.Option("utf-8", help="the CSV files' encoding"),
                 decimal: str = typer.Option(".", help='the decimal mark: "." or ","')) -> None:
    """Draft a schema from the data (types, missing values, ids, candidate allowed lists); min/max are yours."""
    from privflow.data.schema_draft import draft_schema
    from privflow.settings import IngestSettings

    if not source.exists():
        raise PrivflowError(f"{source}: no such file or folder; give the path of the export to draft from")
    name = name or source.name.split(".")[0]
    out = out or Path("schemas") / f"{name}.yaml"
    if out.exists():
        raise PrivflowError(f"{out}: exists; privflow never overwrites a schema: choose another --out")
    try:
        ingest = IngestSettings(source=source, delimiter=delimiter, encoding=encoding, decimal=decimal)
    except ValueError as error:
        raise PrivflowError(f"invalid option: {error}") from None
    text = draft_schema(source, ingest, name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    console.print(f"draft schema: [bold]{out}[/bold]. Next: declare min/max of each numeric or date feature, check "
                  f"the privacy_unit and target, then add `{name}: {{source: {source}, schema: {out}}}` under "
                  "`datasets:` in params.yaml")


@keys_app.command("list")
def keys_list() -> None:
    """Key ids, states and what wraps what (never key material)."""
    keyring = Keyring.open(keyring_path(), create=False)
    table = Table("key id", "kind", "state / wrapped under", "created", title=str(keyring.path))
    for kek in keyring.keks.keks.values():
        table.add_row(kek.kek_id, "KEK", kek.state, kek.created)
    for key in keyring.dataset_keys.values():
        table.add_row(key.key_id, f"data key of {key.dataset}", key.wrapped.kek_id, key.created)
    console.print(table)


@keys_app.command("init")
def keys_init() -> None:
    """Create the local keyring (mode 0600) if it does not exist."""
    keyring = Keyring.open(keyring_path())
    console.print(f"keyring {keyring.path}: primary KEK {keyring.keks.primary().kek_id}")


@keys_app.command("rotate")
def keys_rotate() -> None:
    """New primary KEK; data keys re-wrapped under it. No artifact changes, no DVC hash changes."""
    with Keyring.open(keyring_path(), create=False).exclusive() as keyring:
        new = keyring.rotate()
    console.print(f"primary KEK is now {new}; {len(keyring.dataset_keys)} data key(s) re-wrapped")


@keys_app.command("retire")
def keys_retire(kek_id: str) -> None:
    """Destroy a KEK that no data key depends on any more."""
    with Keyring.open(keyring_path(), create=False).exclusive() as keyring:
        keyring.retire(kek_id)
    console.print(f"KEK {kek_id} retired: its material is destroyed")


@budget_app.command("show")
def budget_show(dataset: str = EVERY_DATASET) -> None:
    """Charges against each dataset's budget (or the named one's) and what is left of its cap."""
    from privflow.budget import budget_name

    for settings in _chosen(dataset):
        name = budget_name(settings)
        ledger = PrivacyLedger(ledger_location(settings))
        table = Table("time", "run", "accountant", "noise", "q", "steps", "delta", "epsilon", title=name)
        for c in ledger.charges(name):
            table.add_row(c.created_at, c.run_id[:12], c.accountant, f"{c.noise_multiplier:.3f}",
                          f"{c.sample_rate:.4f}", str(c.steps), f"{c.delta:g}", f"{c.epsilon:.3f}")
        console.print(table)
        budget = ledger.budget(name, settings.privacy.epsilon_cap)
        console.print(f"{name}: {budget.runs} run(s), composed epsilon {budget.spent:.3f} at delta "
                      f"{budget.delta_total:g} (sum of epsilons {budget.spent_sum:.3f}) of cap {budget.cap:g}; "
                      f"remaining {budget.remaining:.3f}")


@budget_app.command("verify")
def budget_verify(dataset: str = EVERY_DATASET) -> None:
    """Check the ledger: its authenticated chain, and every anchor of its head kept outside it
    (sealed beside each model and in the project, in the metrics, in the DVC cache and in archived reports).
    Exit 1 on any edit, deletion, reset, truncation or rebuild."""
    from privflow.artifacts import open_vault
    from privflow.budget import budget_name, find_anchors, with_project_anchors
    from privflow.privacy.ledger import ledger_key
    from privflow.flows.pipeline import reports_dir
    from privflow.flows.stages import stage_outputs

    vault = open_vault()
    by_ledger: dict[str, list] = {}
    budgets: dict[str, set[str]] = {}
    for settings in _chosen(dataset):
        name, budget = settings.dataset.name, budget_name(settings)
        model_dir, *rest = stage_outputs(Path("."), f"train@{name}")
        metrics = next((p for p in rest if p.name == "train.json"), None)
        anchors, missing = find_anchors(vault, budget, model_dir=model_dir, metrics=metrics,
                                        reports=reports_dir(Path("."), name))
        by_ledger.setdefault(ledger_location(settings), []).extend(anchors)
        budgets.setdefault(ledger_location(settings), set()).add(budget)
        console.print(f"{name} (budget {budget}): {len(anchors)} anchor(s) found"
                      + (f"; none in {', '.join(missing)}" if missing else ""), highlight=False)
    problems = []
    for location, anchors in by_ledger.items():
        anchors = with_project_anchors(vault, anchors, budgets[location])
        ledger = PrivacyLedger(location, key=ledger_key(vault.keys))
        problems += ledger.verify(anchors)
        console.print(f"ledger {ledger.engine.url.render_as_string(hide_password=True)}: {ledger.count()} "
                      f"entries, {len(anchors)} anchor(s) checked", highlight=False)
    for problem in problems:
        console.print(f"[red]{problem}[/red]", highlight=False)
    if problems:
        console.print("restore the ledger from its backup; until it verifies, train refuses to charge it")
        raise typer.Exit(1)
    console.print("ledger intact")


@budget_app.command("audit")
def budget_audit(dataset: str = EVERY_DATASET) -> None:
    """Recompute every charge with Google's dp-accounting (PLD and RDP); exit 1 on a mismatch."""
    from privflow.privacy.crosscheck import RELATIVE_TOLERANCE, recompute

    problems, checked = [], 0
    for settings in _chosen(dataset):
        from privflow.budget import budget_name

        charges = PrivacyLedger(ledger_location(settings)).charges(budget_name(settings))
        rows = recompute(charges, settings.privacy.epsilon_cap)
        table = Table("what", "charged (Opacus)", "PLD (dp-accounting)", "gap", "RDP (dp-accounting)",
                      title=f"{settings.dataset.name}: independent recomputation, tolerance {RELATIVE_TOLERANCE:.0%}")
        for row in rows:
            table.add_row(row.label, f"{row.charged:.4f}", f"{row.pld:.4f}", f"{row.relative_gap:.2%}",
                          f"{row.rdp:.4f}")
        console.print(table)
        problems += [p for row in rows for p in row.problems]
        checked += len(charges)
    for problem in problems:
        console.print(f"[red]{problem}[/red]")
    if problems:
        raise typer.Exit(1)
    console.print(f"{checked} charge(s) confirmed by an independent accountant")


def main() -> None:
    from privflow.errors import EXIT_UNEXPECTED, describe_unexpected

    try:
        app()
    except PrivflowError as error:
        console.print(f"[red]privflow: {error}[/red]", highlight=False)
        raise SystemExit(2) from None
    except Exception as error:  # noqa: BLE001 (never a raw traceback: one line, the frames in a file)
        console.print(f"[red]privflow: {describe_unexpected(error, 'cli')}[/red]", highlight=False)
        raise SystemExit(EXIT_UNEXPECTED) from None
