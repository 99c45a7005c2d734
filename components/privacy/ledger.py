"""The privacy budget ledger: every charge against a dataset, across all runs.

Keyed by dataset and privacy unit (the people), not by file hash, so a new snapshot of the
same people draws on the same budget. Rows are append-only and hash-chained: each entry
stores the hash of the previous one, so an edited or deleted row breaks the chain.
The cap check and the insert happen in one write transaction (SQLite `BEGIN IMMEDIATE`),
so two concurrent runs cannot both spend the last of a budget.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import closing
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from components.errors import BudgetExceeded

GENESIS = "0" * 64
_SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL, dataset TEXT NOT NULL, privacy_unit TEXT NOT NULL,
    snapshot_id TEXT NOT NULL, stage TEXT NOT NULL, mechanism TEXT NOT NULL,
    accountant TEXT NOT NULL, noise_multiplier REAL NOT NULL, sample_rate REAL NOT NULL,
    steps INTEGER NOT NULL, delta REAL NOT NULL, epsilon REAL NOT NULL,
    code_commit TEXT NOT NULL, created_at TEXT NOT NULL,
    prev_hash TEXT NOT NULL, entry_hash TEXT NOT NULL UNIQUE
)"""


@dataclass(frozen=True)
class Charge:
    run_id: str
    dataset: str
    privacy_unit: str
    snapshot_id: str
    stage: str
    mechanism: str
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    epsilon: float
    code_commit: str
    created_at: str


_COLUMNS = [f.name for f in fields(Charge)]


def entry_hash(charge: Charge, prev_hash: str) -> str:
    body = json.dumps({"prev": prev_hash, **asdict(charge)}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class Budget:
    dataset: str
    cap: float
    spent: float  # basic composition: the sum of charged epsilons (an upper bound)

    @property
    def remaining(self) -> float:
        return self.cap - self.spent


class PrivacyLedger:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        with closing(self._connect()) as db, db:
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def charges(self, dataset: str | None = None) -> list[Charge]:
        query = f"SELECT {', '.join(_COLUMNS)} FROM charges"
        query += " WHERE dataset = ? ORDER BY seq" if dataset else " ORDER BY seq"
        with closing(self._connect()) as db:
            rows = db.execute(query, (dataset,) if dataset else ()).fetchall()
        return [Charge(*row) for row in rows]

    def budget(self, dataset: str, cap: float) -> Budget:
        return Budget(dataset, cap, sum(c.epsilon for c in self.charges(dataset)))

    def charge(self, charge: Charge, cap: float) -> Budget:
        """Record the charge if it fits under the cap; otherwise refuse with the numbers."""
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                spent = db.execute("SELECT COALESCE(SUM(epsilon), 0) FROM charges WHERE dataset = ?",
                                   (charge.dataset,)).fetchone()[0]
                if spent + charge.epsilon > cap + 1e-12:
                    raise BudgetExceeded(
                        f"dataset '{charge.dataset}': this run needs epsilon {charge.epsilon:.4g}, "
                        f"{spent:.4g} of the cap {cap:.4g} is already spent ({cap - spent:.4g} left); "
                        "lower train.target_epsilon, or have the data owner raise privacy.epsilon_cap"
                    )
                last = db.execute("SELECT entry_hash FROM charges ORDER BY seq DESC LIMIT 1").fetchone()
                prev = last[0] if last else GENESIS
                db.execute(
                    f"INSERT INTO charges ({', '.join(_COLUMNS)}, prev_hash, entry_hash) "
                    f"VALUES ({', '.join('?' * (len(_COLUMNS) + 2))})",
                    (*asdict(charge).values(), prev, entry_hash(charge, prev)),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return Budget(charge.dataset, cap, spent + charge.epsilon)

    def verify(self) -> list[str]:
        """Problems found in the hash chain; empty when every entry is intact and in place."""
        with closing(self._connect()) as db:
            rows = db.execute(f"SELECT seq, {', '.join(_COLUMNS)}, prev_hash, entry_hash "
                              "FROM charges ORDER BY seq").fetchall()
        problems, prev = [], GENESIS
        for seq, *values, stored_prev, stored_hash in rows:
            if stored_prev != prev:
                problems.append(f"entry {seq}: previous-hash link broken (an entry was deleted or reordered)")
            if entry_hash(Charge(*values), stored_prev) != stored_hash:
                problems.append(f"entry {seq}: contents do not match its hash (edited)")
            prev = stored_hash
        return problems
