"""What every command shares: the console, the dataset options, the keyring's first creation.

Importing privflow.flows first sets Prefect's embedded defaults before Prefect loads.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import typer
from rich.console import Console

import privflow.flows  # noqa: F401  (sets Prefect's embedded defaults before Prefect loads)
from privflow.errors import PrivflowError

app = typer.Typer(help="Train models on sensitive data under differential privacy, with an audit trail.")
# long lines stay whole (greppable in logs and CI); no markup: what is printed holds users' words
# (paths, settings, messages such as "allowed: [false, true]", which markup would swallow), so
# styles are given as `style=`
console = Console(soft_wrap=True, markup=False)
ONE_DATASET = typer.Option(None, "--dataset", "-d",
                          help="a dataset of params.yaml; needed when it declares several")
EVERY_DATASET = typer.Option(None, "--dataset", "-d", help="only this dataset of params.yaml (default: every one)")


def one_line_summaries(commands: typer.Typer) -> None:
    """Each command's line in a group's list is its docstring's first paragraph, unwrapped: in
    rich markup mode typer keeps that paragraph's line breaks there (not in the command's own
    --help), so a wrapped docstring printed as ragged lines."""
    for info in commands.registered_commands:
        if info.short_help is None and info.callback is not None and info.callback.__doc__:
            info.short_help = " ".join(inspect.cleandoc(info.callback.__doc__).split("\n\n")[0].split())
    for group in commands.registered_groups:
        one_line_summaries(group.typer_instance)


def chosen_settings(dataset: str | None) -> list:
    """Settings of the named dataset, or of every declared dataset."""
    from privflow.settings import dataset_names, load_settings

    return [load_settings(name) for name in ([dataset] if dataset else dataset_names())]


def ensure_keyring(root: Path) -> None:
    """The project's first run makes the keyring; a later run that finds it gone refuses:
    sealed artifacts exist that only the lost keyring opens, and the ledger's entries are
    authenticated under it. Restoring it is the fix, never a new empty one."""
    from privflow.crypto.keys import Keyring
    from privflow.settings import keyring_path

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


def one_dataset(dataset: str | None) -> str:
    """The named dataset, or the only one declared; several and none named is a clear error."""
    from privflow.settings import load_settings

    return load_settings(dataset).dataset.name
