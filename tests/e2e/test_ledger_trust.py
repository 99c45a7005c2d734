"""A ledger an auditor can trust, through the real pipeline: every tamper an attacker or a
careless user tried is found by `privflow budget verify` and refused by `train`, which
charges nothing; a tampered input is refused before the charge."""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import fields

import pytest
import yaml

from privflow.crypto.keys import Keyring
from privflow.privacy.ledger import GENESIS, Charge, entry_hash, ledger_key
from tests.workspace import demo_workspace

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    workspace = demo_workspace(tmp_path_factory.mktemp("ledger-trust"), churn=True)
    workspace.edit_params(train={"epochs": 2})
    workspace.run("privflow", "run", check=True)
    workspace.run("git", "add", "-A", check=True)
    workspace.run("git", "commit", "-qm", "first run", check=True)  # metrics with their anchors, at HEAD
    backup = workspace.base / "ledger-backup.sqlite"
    shutil.copyfile(workspace.ledger, backup)
    return workspace, backup


@pytest.fixture
def workspace(project):
    """The trained project, with its ledger and outputs as the first run left them afterwards."""
    workspace, backup = project
    yield workspace
    shutil.copyfile(backup, workspace.ledger)
    workspace.run("git", "checkout", "-q", "--", ".", check=True)
    workspace.run("dvc", "checkout", "--force", check=True)


def _sql(workspace, statement: str, *args) -> None:
    with sqlite3.connect(workspace.ledger) as conn:
        conn.execute(statement, args)


def _count(workspace) -> int:
    if not workspace.ledger.exists():
        return 0
    with sqlite3.connect(workspace.ledger) as conn:
        return conn.execute("SELECT count(*) FROM charges").fetchone()[0]


def _rebuild_without_the_key(workspace) -> None:
    """Delete the first entry and recompute every tag, as one could with plain SHA-256."""
    with sqlite3.connect(workspace.ledger) as conn:
        conn.row_factory = sqlite3.Row
        conn.execute("DELETE FROM charges WHERE seq = 1")
        prev = GENESIS
        for row in conn.execute("SELECT * FROM charges ORDER BY seq").fetchall():
            tag = entry_hash(Charge(*(row[f.name] for f in fields(Charge))), prev, b"\0" * 32)
            conn.execute("UPDATE charges SET prev_hash = ?, entry_hash = ? WHERE seq = ?", (prev, tag, row["seq"]))
            prev = tag


TAMPERS = {
    "ledger file deleted": (lambda w: w.ledger.unlink(), "does not hold it"),
    "tail row deleted": (lambda w: _sql(w, "DELETE FROM charges WHERE seq = (SELECT max(seq) FROM charges)"),
                         "does not hold it"),
    "middle row deleted": (lambda w: _sql(w, "DELETE FROM charges WHERE seq = 1"),
                           "link to the previous entry broken"),
    "entry edited": (lambda w: _sql(w, "UPDATE charges SET epsilon = 0.01 WHERE seq = 1"),
                     "contents do not match its authentication tag"),
    "chain rebuilt without the key": (_rebuild_without_the_key, "contents do not match its authentication tag"),
}


def test_the_honest_ledger_verifies_against_every_anchor(workspace):
    result = workspace.run("privflow", "budget", "verify", columns=250)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ledger intact" in result.stdout
    # beside the model, in the project, in the metrics (working tree and DVC cache), in the archived report
    assert "breast_cancer (budget breast_cancer): 5 anchor(s) found" in result.stdout
    assert "train.json at git HEAD" in result.stdout  # metrics are DVC's here, not git's: named as missing


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_each_tamper_is_found_by_verify_and_refused_by_train(workspace, tamper):
    apply, phrase = TAMPERS[tamper]
    apply(workspace)
    verify = workspace.run("privflow", "budget", "verify", columns=250)
    assert verify.returncode == 1 and phrase in verify.stdout, verify.stdout + verify.stderr
    before = _count(workspace)
    train = workspace.run("dvc", "repro", "--force", "--single-item", "train@breast_cancer")
    assert train.returncode != 0
    assert "LedgerTampered" in train.stderr and "nothing was charged" in train.stderr, train.stderr
    assert phrase in train.stderr and "Restore the ledger from its backup" in train.stderr
    assert _count(workspace) == before  # refused onto the broken ledger: nothing appended


def test_the_same_snapshot_under_a_second_name_gets_no_fresh_budget(workspace):
    params = yaml.safe_load((workspace.repo / "params.yaml").read_text())
    params["datasets"]["copy"] = dict(params["datasets"]["breast_cancer"])  # the same export, a new name
    (workspace.repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (workspace.repo / "data" / "public" / "copy").mkdir(parents=True, exist_ok=True)
    (workspace.repo / "data" / "public" / "copy" / "README.md").write_text("no public data\n")
    before = _count(workspace)
    train = workspace.run("dvc", "repro", "train@copy")
    assert train.returncode != 0 and "already charged under budget 'breast_cancer'" in train.stderr, train.stderr
    assert "declare `budget: breast_cancer`" in train.stderr and _count(workspace) == before
    # a ledger that holds such a pair anyway (an older privflow's): verify names it
    with sqlite3.connect(workspace.ledger) as conn:
        conn.row_factory = sqlite3.Row
        last = conn.execute("SELECT * FROM charges ORDER BY seq DESC LIMIT 1").fetchone()
        first = conn.execute("SELECT snapshot_id FROM charges WHERE dataset = 'breast_cancer'").fetchone()[0]
        copy = Charge(**{**{f.name: last[f.name] for f in fields(Charge)}, "run_id": "x" * 32, "dataset": "copy",
                         "snapshot_id": first})
        key = ledger_key(Keyring.open(workspace.base / "keys" / "keyring.json"))
        conn.execute(f"INSERT INTO charges ({', '.join(f.name for f in fields(Charge))}, prev_hash, entry_hash) "
                     f"VALUES ({', '.join('?' * (len(fields(Charge)) + 2))})",
                     (*(getattr(copy, f.name) for f in fields(Charge)), last["entry_hash"],
                      entry_hash(copy, last["entry_hash"], key)))
    verify = workspace.run("privflow", "budget", "verify", columns=250)
    assert verify.returncode == 1 and "is charged under budgets ['breast_cancer', 'copy']" in verify.stdout


def _swap(a, b) -> None:
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)


def _flip(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


INPUT_TAMPERS = {
    "byte flip": lambda w: _flip(w.artifacts("encrypt") / "train.sealed"),
    "truncation": lambda w: (w.artifacts("encrypt") / "test.sealed").write_bytes(
        (w.artifacts("encrypt") / "test.sealed").read_bytes()[:-100]),
    "train/test swap": lambda w: _swap(w.artifacts("encrypt") / "train.sealed", w.artifacts("encrypt") / "test.sealed"),
    "another dataset's split": lambda w: shutil.copyfile(w.artifacts("encrypt", "churn") / "train.sealed",
                                                         w.artifacts("encrypt") / "train.sealed"),
}


@pytest.mark.parametrize("tamper", list(INPUT_TAMPERS))
def test_a_tampered_input_is_refused_before_the_charge(workspace, tamper):
    INPUT_TAMPERS[tamper](workspace)
    before = _count(workspace)
    train = workspace.run("dvc", "repro", "--force", "--single-item", "train@breast_cancer")
    assert train.returncode != 0 and "IntegrityError" in train.stderr, train.stderr
    assert "charge" not in train.stderr.split("IntegrityError", 1)[1]  # no "charge stands": none was made
    assert _count(workspace) == before
