"""Commands for the data owner: the quarantine and schema files."""

from __future__ import annotations

from pathlib import Path

import typer

from privflow.errors import PrivflowError
from privflow.flows.cli.common import ONE_DATASET, console, one_dataset

schema_app = typer.Typer(help="For the data owner: schema files.")


def quarantine(values: bool = typer.Option(False, "--values", help="also show the rejected values (sensitive)"),
               dataset: str = ONE_DATASET) -> None:
    """For the data owner: every quarantined row with file, row, column and failed check."""
    from privflow.artifacts import open_vault
    from privflow.data.dataset import read_quarantine
    from privflow.data.records import RowFailure
    from privflow.flows.stages import stage_outputs

    name = one_dataset(dataset)
    snapshot_dir, data_dir = (stage_outputs(Path("."), f"{stage}@{name}")[0] for stage in ("ingest", "encrypt"))
    source, spans, records = read_quarantine(open_vault(), snapshot_dir, data_dir)
    if values:
        console.print("showing quarantined values: sensitive data on this terminal", style="yellow")
    for record in records:
        for column, check in record["failures"]:
            line = RowFailure(record["row"], column, check).describe(spans, source)
            shown = (record["values"] or {}).get(column, record["text"]) if values else None
            typer.echo(line + (f" (value {shown!r})" if shown is not None else ""))  # unwrapped, greppable
    console.print(f"{len(records)} quarantined or unparseable record(s)")


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
    console.print(f"draft schema: {out}. Next: declare min/max of each numeric or date feature, check "
                  f"the privacy_unit and target, then add `{name}: {{source: {source}, schema: {out}}}` under "
                  "`datasets:` in params.yaml")
