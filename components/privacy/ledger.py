"""The privacy budget ledger: every charge against a dataset, across all runs.

A real database: a SQLite file by default (outside DVC outs, so `dvc repro`, `git checkout`
and crashes leave it alone), PostgreSQL for teams (any SQLAlchemy URL). Keyed by dataset
and privacy unit (the people), not by file hash, so a new snapshot of the same people
draws on the same budget. Rows are append-only and chained: each entry stores the tag of the
previous one, so an edited or deleted row breaks the chain (`verify`).

The tags are HMAC-SHA-256 under a key the ledger does not hold (derived from the keyring's
ledger key): whoever can write the database but not read the keyring cannot rebuild a
valid chain after deleting or editing rows. A chain alone cannot show a reset or a cut tail,
so the ledger's head after each charge (sequence number and tag, a `LedgerAnchor`) is kept
where the ledger's writer cannot rewrite it unseen: sealed beside the trained model, in the
run's DVC-tracked metrics and in every archived report. `verify(anchors)` checks the chain
and that every anchor's entry is still there, as Certificate Transparency's signed tree
heads (RFC 6962) let clients detect a log that forgot what it once held.

The cap check and the insert happen in one transaction that holds the table's write lock
(SQLite `BEGIN IMMEDIATE`, a PostgreSQL advisory lock), so two concurrent runs cannot both
spend the last of a budget. The cap applies to the PRV accountant's composition of every
charged mechanism (tighter than, and shown beside, the sum of epsilons).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)

from privflow.errors import BudgetExceeded, PrivacyError, PrivflowError
from privflow.privacy.accounting import composed_epsilon

GENESIS = "0" * 64
ADVISORY_LOCK = 0x70726976666C6F77 & 0x7FFFFFFFFFFFFFFF  # "privflow": serialises charges on PostgreSQL


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


LEDGER_KEY_NAME = ":ledger"  # the keyring entry whose key authenticates ledger entries (not a dataset name)


class LedgerTampered(PrivacyError):
    """The ledger fails verification: no charge is added to it until it is restored."""


def entry_hash(charge: Charge, prev_hash: str, key: bytes) -> str:
    """The entry's tag: HMAC-SHA-256 of its contents and the previous tag."""
    body = json.dumps({"prev": prev_hash, **asdict(charge)}, sort_keys=True)
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def ledger_key(keyring) -> bytes:
    """The MAC key, derived from the keyring's ledger key (created once, rotated with the KEKs)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    _, key = keyring.dataset_key(LEDGER_KEY_NAME)
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"privflow ledger entry tags v1").derive(key)


@dataclass(frozen=True)
class LedgerAnchor:
    """The ledger's head right after a charge: enough to show later that it still holds it."""

    seq: int
    entry_hash: str
    budget: str
    budget_entries: int  # the budget's charges up to and including this one
    run_id: str


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


def budget_of(dataset: str, cap: float, charges: list[Charge], *, mac_key: bytes | None = None,
              from_memo: bool = False) -> Budget:
    """`mac_key` records the composition in privflow.privacy.accounting.EPSILON_MEMO; `from_memo`
    (a display only) reads it from there when its tag verifies."""
    delta = sum(c.delta for c in charges)
    spent = composed_epsilon([(c.noise_multiplier, c.sample_rate, c.steps) for c in charges], delta,
                             mac_key=mac_key, from_memo=from_memo)
    return Budget(dataset, cap, spent, sum(c.epsilon for c in charges), delta, len(charges))


def ledger_url(location: str | Path) -> str:
    """A SQLAlchemy URL as is; anything else is the path of a SQLite file."""
    location = str(location)
    if "://" in location:
        return location
    Path(location).parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{location}"


class PrivacyLedger:
    def __init__(self, location: str | Path, key: bytes | None = None):
        """`key` authenticates entries; None: derived from the keyring at $PRIVFLOW_KEYRING."""
        self._key = key
        self.url = ledger_url(location)
        # SQLite: wait for another run's charge (its composition can take seconds on a loaded
        # machine) instead of failing after the driver's 5 s with "database is locked"
        self.engine = create_engine(self.url, **({"connect_args": {"timeout": 120}}
                                                 if self.url.startswith("sqlite") else {}))
        if self.engine.dialect.name == "sqlite":
            # SQLite's driver opens transactions lazily; a charge takes the write lock at BEGIN
            # instead (the SQLAlchemy recipe), so its read-check-insert is serialised. Reads
            # begin plainly and never wait behind a charge.
            event.listen(self.engine, "connect", lambda conn, _: setattr(conn, "isolation_level", None))
            event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql(
                "BEGIN IMMEDIATE" if conn.get_execution_options().get("write_lock") else "BEGIN"))
        self._create_tables()

    def _create_tables(self) -> None:
        """Runs opening a new shared ledger at once all see no table: under the write lock the later
        ones find the first's tables. An existing ledger is opened without waiting behind a charge."""
        with self.engine.connect() as conn:
            if all(inspect(conn).has_table(table.name) for table in _METADATA.sorted_tables):
                return
        with self._write_locked() as conn:
            _METADATA.create_all(conn)

    @contextmanager
    def _write_locked(self) -> Iterator:
        """A transaction holding the ledger's write lock: one at a time across processes and machines."""
        with self.engine.connect().execution_options(write_lock=True) as conn, conn.begin():
            if self.engine.dialect.name == "postgresql":
                # a transaction-scoped advisory lock, not LOCK TABLE: it needs no UPDATE or DELETE
                # privilege, so the ledger's role may hold INSERT and SELECT only (infra/README.md)
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK})
            yield conn

    @property
    def key(self) -> bytes:
        if self._key is None:
            from privflow.crypto.keys import Keyring
            from privflow.settings import keyring_path

            self._key = ledger_key(Keyring.open(keyring_path(), create=False))
        return self._key

    def charges(self, dataset: str | None = None) -> list[Charge]:
        with self.engine.connect() as conn:
            return self._rows(conn, dataset)

    def budget(self, dataset: str, cap: float, *, from_memo: bool = False) -> Budget:
        """`from_memo`: for a display only; a charge composes afresh (see charge)."""
        charges = self.charges(dataset)
        return budget_of(dataset, cap, charges, mac_key=self.memo_key() if charges else None, from_memo=from_memo)

    def memo_key(self) -> bytes | None:
        """The key that tags remembered compositions: the ledger's, or None before the keyring exists."""
        try:
            return self.key
        except PrivflowError:
            return None

    def charge(self, charge: Charge, cap: float) -> Budget:
        """Record the charge if the composition still fits under the cap; else refuse with the numbers."""
        with self._write_locked() as conn:
            after = self._refuse_or_budget(conn, charge, cap)
            last = conn.execute(select(CHARGES.c.entry_hash).order_by(CHARGES.c.seq.desc()).limit(1)).scalar()
            prev = last or GENESIS
            conn.execute(CHARGES.insert().values(**asdict(charge), prev_hash=prev,
                                                 entry_hash=entry_hash(charge, prev, self.key)))
        return after

    def check(self, charge: Charge, cap: float) -> Budget:
        """What `charge` would do, without recording it: the budget after it, or the refusal."""
        with self.engine.connect() as conn:
            return self._refuse_or_budget(conn, charge, cap)

    def _refuse_or_budget(self, conn, charge: Charge, cap: float) -> Budget:
        elsewhere = sorted({c.dataset for c in self._rows(conn, None)
                            if c.snapshot_id == charge.snapshot_id and c.dataset != charge.dataset})
        if elsewhere:
            raise BudgetExceeded(
                f"snapshot {charge.snapshot_id[:19]} was already charged under budget {elsewhere[0]!r}: the same "
                f"people cannot get a fresh budget '{charge.dataset}' by a new name. If this entry is that data "
                f"renamed, or another view of the same people, declare `budget: {elsewhere[0]}` in its params.yaml entry")
        existing = self._rows(conn, charge.dataset)
        # composed afresh, never read from the memo; recorded there for the displays that follow
        before = budget_of(charge.dataset, cap, existing, mac_key=self.memo_key())
        after = budget_of(charge.dataset, cap, [*existing, charge], mac_key=self.memo_key())
        if after.spent > cap + 1e-9:
            raise BudgetExceeded(
                f"dataset '{charge.dataset}': this run (epsilon {charge.epsilon:.4g}) would bring the "
                f"composed epsilon from {before.spent:.4g} to {after.spent:.4g} (sum of epsilons "
                f"{after.spent_sum:.4g}), over the cap {cap:.4g}; lower train.target_epsilon, or have "
                "the data owner raise privacy.epsilon_cap")
        return after

    def anchor(self, run_id: str) -> LedgerAnchor | None:
        """The head as it stood right after run `run_id`'s charge."""
        with self.engine.connect() as conn:
            row = conn.execute(select(CHARGES.c.seq, CHARGES.c.entry_hash, CHARGES.c.dataset)
                               .where(CHARGES.c.run_id == run_id).order_by(CHARGES.c.seq)).first()
            if row is None:
                return None
            count = conn.execute(select(func.count()).select_from(CHARGES).where(
                CHARGES.c.dataset == row.dataset, CHARGES.c.seq <= row.seq)).scalar_one()
        return LedgerAnchor(row.seq, row.entry_hash, row.dataset, count, run_id)

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

    def verify(self, anchors: list[tuple[str, LedgerAnchor]] = ()) -> list[str]:
        """Problems found: in the chain of tags, against each (where, anchor) recorded outside
        the ledger, and snapshots charged under two budgets. Empty when all is intact."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(CHARGES).order_by(CHARGES.c.seq)).mappings().all()
        problems, prev = [], GENESIS
        for row in rows:
            if row["prev_hash"] != prev:
                problems.append(f"entry {row['seq']}: link to the previous entry broken (an entry was deleted "
                                "or reordered)")
            if not hmac.compare_digest(entry_hash(Charge(*(row[n] for n in _COLUMNS)), row["prev_hash"], self.key),
                                       row["entry_hash"]):
                problems.append(f"entry {row['seq']}: contents do not match its authentication tag (edited, "
                                "rebuilt without the key, or written under another keyring)")
            prev = row["entry_hash"]
        held = {row["seq"]: row["entry_hash"] for row in rows}
        for where, anchor in anchors:
            if held.get(anchor.seq) != anchor.entry_hash:
                problems.append(
                    f"{where} records ledger entry {anchor.seq} (run {anchor.run_id[:12]}, the budget's "
                    f"charge {anchor.budget_entries}) but the ledger {'holds another entry there' if anchor.seq in held else 'does not hold it'}: "
                    "it was reset, truncated or rebuilt")
        budgets_by_snapshot: dict[str, set[str]] = {}
        for row in rows:
            budgets_by_snapshot.setdefault(row["snapshot_id"], set()).add(row["dataset"])
        problems += [f"snapshot {snapshot[:19]} is charged under budgets {sorted(names)}: one population, "
                     "two budgets (declare one `budget:` for both entries)"
                     for snapshot, names in budgets_by_snapshot.items() if len(names) > 1]
        return problems
