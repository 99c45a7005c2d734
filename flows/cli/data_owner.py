"""Commands for the data owner: the quarantine and schema files."""

from __future__ import annotations

import re
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
                 delimiter: str = typer.Option(None, help="the CSV field delimiter (default: guessed from the file)"),
                 encoding: str = typer.Option(None, help="the CSV files' encoding (default: guessed: utf-8, cp1252)"),
                 decimal: str = typer.Option(None, help='the decimal mark, "." or "," (default: guessed)'),
                 thousands: str = typer.Option(None, help='the digit-group mark of 4.157,45: ".", ",", " " or "\'" '
                                               "(default: guessed; none unless numbers are grouped)")) -> None:
    """Draft a schema from the data (types, missing values, ids, candidate allowed lists); min/max are yours."""
    from privflow.data.csv_dialect import ingest_entry, sniff_dialect
    from privflow.data.schema_draft import draft_schema
    from privflow.data.sources import list_source
    from privflow.errors import DatasetError
    from privflow.settings import IngestSettings

    if not source.exists():
        raise PrivflowError(f"{source}: no such file or folder; give the path of the export to draft from")
    name = name or source.name.split(".")[0]
    out = out or Path("schemas") / f"{name}.yaml"
    if out.exists():
        raise PrivflowError(f"{out}: exists; privflow never overwrites a schema: choose another --out")
    given = {"delimiter": delimiter, "encoding": encoding, "decimal": decimal, "thousands": thousands}
    dialect = {**sniff_dialect(source, encoding), **{key: value for key, value in given.items() if value is not None}}
    try:
        ingest = IngestSettings(source=source, **dialect)
    except ValueError as error:
        raise PrivflowError(f"invalid option: {error}") from None
    try:
        text = draft_schema(source, ingest, name, ingest_entry(dialect))
    except DatasetError as error:  # the reader names params.yaml's setting; here it is an option
        raise PrivflowError(_as_options(str(error))) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    guessed = [f"--{key}" for key, value in given.items() if value is None]
    if guessed and list_source(source)[0].name.endswith((".csv", ".csv.gz")):
        console.print("read as " + ", ".join(f"{key} {dialect[key]!r}" for key in dialect if dialect[key] is not None)
                      + f" (guessed from the file; {', '.join(guessed)} to say otherwise)")
    entry = ", ".join(filter(None, [f"source: {source}", f"schema: {out}", ingest_entry(dialect)]))
    console.print(f"draft schema: {out}. Next: declare min/max of each numeric or date feature, check "
                  f"the privacy_unit and target, then add `{name}: {{{entry}}}` under `datasets:` in params.yaml")


def _as_options(message: str) -> str:
    """A reader's advice to set ingest.X in params.yaml, as the draft's --X option."""
    return re.sub(r"set ingest\.(\w+) in params\.yaml( to)?", lambda m: f"pass --{m[1]}" + (" with" if m[2] else ""),
                  message).replace(
        "in ingest.encoding", "given to --encoding")
