"""The privacy budget ledger: every charge against a dataset, across all runs.

A real database: a SQLite file by default (outside DVC outs, so `dvc repro`, `git checkout`
and crashes leave it alone), PostgreSQL for teams (any SQLAlchemy URL). Keyed by dataset
and privacy unit (the people), not by file hash, so a new snapshot of the same people
draws on the same budget. Rows are append-only and hash-chained: each entry stores the hash
of the previous one, so an edited or deleted row breaks the chain (`verify`).

The cap check and the insert happen in one transaction that holds the table's write lock
(SQLite `BEGIN IMMEDIATE`, PostgreSQL `LOCK TABLE`), so two concurrent runs cannot both
spend the last of a budget. The cap applies to the PRV accountant's composition of every
charged mechanism (tighter than, and shown beside, the sum of epsilons).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, create_engine, event, func, select, text

from components.errors import BudgetExceeded
from components.privacy.accounting import composed_epsilon

GENESIS = "0" * 64


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


_TYPES = {"str": String, "float": Float, "int": Integer}  # Charge's annotations, as strings
_METADATA = MetaData()
CHARGES = Table(
    "charges", _METADATA,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    *(Column(f.name, _TYPES[f.type], nullable=False) for f in fields(Charge)),
    Column("prev_hash", String(64), nullable=False),
    Column("entry_hash", String(64), nullable=False, unique=True),
)
_COLUMNS = [f.name for f in fields(Charge)]


def entry_hash(charge: Charge, prev_hash: str) -> str:
    body = json.dumps({"prev": prev_hash, **asdict(charge)}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class Budget:
    dataset: str
    cap: float
    spent: float        # PRV composition of every charge, at delta = delta_total
    spent_sum: float    # basic composition: the sum of charged epsilons
    delta_total: float  # the sum of charged deltas
    runs: int

    @property
    def remaining(self) -> float:
        return self.cap - self.spent


def budget_of(dataset: str, cap: float, charges: list[Charge]) -> Budget:
    delta = sum(c.delta for c in charges)
    spent = composed_epsilon([(c.noise_multiplier, c.sample_rate, c.steps) for c in charges], delta)
    return Budget(dataset, cap, spent, sum(c.epsilon for c in charges), delta, len(charges))


def ledger_url(location: str | Path) -> str:
    """A SQLAlchemy URL as is; anything else is the path of a SQLite file."""
    location = str(location)
    if "://" in location:
        return location
    Path(location).parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{location}"


class PrivacyLedger:
    def __init__(self, location: str | Path):
        self.url = ledger_url(location)
        self.engine = create_engine(self.url)
        if self.engine.dialect.name == "sqlite":
            # SQLite's driver opens transactions lazily; a charge takes the write lock at BEGIN
            # instead (the SQLAlchemy recipe), so its read-check-insert is serialised. Reads
            # begin plainly and never wait behind a charge.
            event.listen(self.engine, "connect", lambda conn, _: setattr(conn, "isolation_level", None))
            event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql(
                "BEGIN IMMEDIATE" if conn.get_execution_options().get("write_lock") else "BEGIN"))
        _METADATA.create_all(self.engine)

    def charges(self, dataset: str | None = None) -> list[Charge]:
        with self.engine.connect() as conn:
            return self._rows(conn, dataset)

    def budget(self, dataset: str, cap: float) -> Budget:
        return budget_of(dataset, cap, self.charges(dataset))

    def charge(self, charge: Charge, cap: float) -> Budget:
        """Record the charge if the composition still fits under the cap; else refuse with the numbers."""
        with self.engine.connect().execution_options(write_lock=True) as conn, conn.begin():
            if self.engine.dialect.name == "postgresql":
                conn.execute(text("LOCK TABLE charges IN SHARE ROW EXCLUSIVE MODE"))
            existing = self._rows(conn, charge.dataset)
            before = budget_of(charge.dataset, cap, existing)
            after = budget_of(charge.dataset, cap, [*existing, charge])
            if after.spent > cap + 1e-9:
                raise BudgetExceeded(
                    f"dataset '{charge.dataset}': this run (epsilon {charge.epsilon:.4g}) would bring the "
                    f"composed epsilon from {before.spent:.4g} to {after.spent:.4g} (sum of epsilons "
                    f"{after.spent_sum:.4g}), over the cap {cap:.4g}; lower train.target_epsilon, or have "
                    "the data owner raise privacy.epsilon_cap")
            last = conn.execute(select(CHARGES.c.entry_hash).order_by(CHARGES.c.seq.desc()).limit(1)).scalar()
            prev = last or GENESIS
            conn.execute(CHARGES.insert().values(**asdict(charge), prev_hash=prev, entry_hash=entry_hash(charge, prev)))
        return after

    @staticmethod
    def _rows(conn, dataset: str | None) -> list[Charge]:
        """Charges in ledger order, of one dataset or (None) of all."""
        query = select(*(CHARGES.c[n] for n in _COLUMNS)).order_by(CHARGES.c.seq)
        if dataset is not None:
            query = query.where(CHARGES.c.dataset == dataset)
        return [Charge(*row) for row in conn.execute(query)]

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(CHARGES)).scalar_one()

    def verify(self) -> list[str]:
        """Problems found in the hash chain; empty when every entry is intact and in place."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(CHARGES).order_by(CHARGES.c.seq)).mappings().all()
        problems, prev = [], GENESIS
        for row in rows:
            if row["prev_hash"] != prev:
                problems.append(f"entry {row['seq']}: previous-hash link broken (an entry was deleted or reordered)")
            if entry_hash(Charge(*(row[n] for n in _COLUMNS)), row["prev_hash"]) != row["entry_hash"]:
                problems.append(f"entry {row['seq']}: contents do not match its hash (edited)")
            prev = row["entry_hash"]
        return problems
