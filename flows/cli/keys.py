"""Commands for the key custodian: the local keyring's key-encryption keys."""

from __future__ import annotations

import typer
from rich.table import Table

from privflow.flows.cli.common import console

app = typer.Typer(help="Key-encryption keys of the local keyring.")


@app.command("list")
def keys_list() -> None:
    """Key ids, states and what wraps what (never key material)."""
    from privflow.crypto.keys import Keyring
    from privflow.crypto.vault import SNAPSHOT_IDS
    from privflow.settings import keyring_path

    keyring = Keyring.open(keyring_path(), create=False)
    table = Table("key id", "kind", "state / wrapped under", "created", title=str(keyring.path))
    for kek in keyring.keks.keks.values():
        table.add_row(kek.kek_id, "KEK", kek.state, kek.created)
    for key in keyring.dataset_keys.values():
        kind = "snapshot-id key" if key.dataset == SNAPSHOT_IDS else f"data key of {key.dataset}"
        table.add_row(key.key_id, kind, key.wrapped.kek_id, key.created)
    console.print(table)


@app.command("init")
def keys_init() -> None:
    """Create the local keyring (mode 0600) if it does not exist."""
    from privflow.crypto.keys import Keyring
    from privflow.settings import keyring_path

    keyring = Keyring.open(keyring_path())
    console.print(f"keyring {keyring.path}: primary KEK {keyring.keks.primary().kek_id}")


@app.command("rotate")
def keys_rotate() -> None:
    """New primary KEK; data keys re-wrapped under it. No artifact changes, no DVC hash changes."""
    from privflow.crypto.keys import Keyring
    from privflow.settings import keyring_path

    with Keyring.open(keyring_path(), create=False).exclusive() as keyring:
        new = keyring.rotate()
    console.print(f"primary KEK is now {new}; {len(keyring.dataset_keys)} data key(s) re-wrapped")


@app.command("retire")
def keys_retire(kek_id: str) -> None:
    """Destroy a KEK that no data key depends on any more."""
    from privflow.crypto.keys import Keyring
    from privflow.settings import keyring_path

    with Keyring.open(keyring_path(), create=False).exclusive() as keyring:
        keyring.retire(kek_id)
    console.print(f"KEK {kek_id} retired: its material is destroyed")
