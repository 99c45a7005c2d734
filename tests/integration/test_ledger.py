"""The budget ledger on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import multiprocessing
from dataclasses import asdict, fields, replace

import pytest
from sqlalchemy import create_engine, text

from privflow.errors import BudgetExceeded
from privflow.privacy.accounting import composed_epsilon, plan_dp_sgd
from privflow.privacy.ledger import CHARGES, GENESIS, Charge, PrivacyLedger, entry_hash, ledger_url


def charge_for(target: float, run: str = "r1", dataset: str = "demo") -> Charge:
    plan = plan_dp_sgd(rows=1000, batch_size=50, epochs=5, target_epsilon=target, target_delta=1e-5,
                       accountant="prv")
    return Charge(run, dataset, "patient_id", f"sha256:snapshot-of-{dataset}", "train", "DP-SGD", plan.accountant,
                  plan.noise_multiplier, plan.sample_rate, plan.steps, plan.delta, plan.epsilon,
                  "abc", "2026-11-23T00:00:00+00:00")


def test_overspend_is_refused_with_the_numbers(ledger_location):
    ledger = PrivacyLedger(ledger_location)
    first = ledger.charge(charge_for(2.0, "r1"), cap=3.0)
    assert first.spent == pytest.approx(charge_for(2.0).epsilon)
    with pytest.raises(BudgetExceeded, match=r"composed epsilon from 1\.99\d to 2\.\d+ \(sum of epsilons 3\.99\d\), over the cap 2\.5"):
        ledger.charge(charge_for(2.0, "r2"), cap=2.5)
    assert [c.run_id for c in ledger.charges("demo")] == ["r1"]  # the refusal recorded nothing


def test_composition_is_tighter_than_the_sum_and_is_what_the_cap_sees(ledger_location):
    ledger = PrivacyLedger(ledger_location)
    for run in ("r1", "r2", "r3"):
        budget = ledger.charge(charge_for(2.0, run), cap=5.0)  # the sum (6) would be refused
    assert budget.runs == 3 and budget.spent_sum == pytest.approx(3 * charge_for(2.0).epsilon)
    assert budget.spent < 5.0 < budget.spent_sum
    mechanisms = [(c.noise_multiplier, c.sample_rate, c.steps) for c in ledger.charges("demo")]
    assert budget.spent == pytest.approx(composed_epsilon(mechanisms, 3e-5))
    assert budget.delta_total == pytest.approx(3e-5)


def test_budgets_are_per_dataset(ledger_location):
    ledger = PrivacyLedger(ledger_location)
    ledger.charge(charge_for(2.0, dataset="a"), cap=2.5)
    ledger.charge(charge_for(2.0, dataset="b"), cap=2.5)
    assert ledger.budget("a", 2.5).runs == 1


def test_edited_and_deleted_entries_are_detected(ledger_location):
    ledger = PrivacyLedger(ledger_location)
    for i in range(3):
        ledger.charge(charge_for(1.0, f"r{i}"), cap=10.0)
    assert ledger.verify() == []
    engine = create_engine(ledger.url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE charges SET epsilon = 0.1 WHERE seq = 2"))
    assert any("entry 2: contents do not match" in p for p in ledger.verify())
    with engine.begin() as conn:
        conn.execute(text("UPDATE charges SET epsilon = :e WHERE seq = 2"), {"e": charge_for(1.0).epsilon})
    assert ledger.verify() == []
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM charges WHERE seq = 2"))
    assert any("entry 3: link to the previous entry broken" in p for p in ledger.verify())


def _try_charge(location: str, run: str, start) -> str:
    start.wait()
    try:
        PrivacyLedger(location).charge(charge_for(2.0, run), cap=2.5)  # one fits (2.0), two do not (2.65)
        return "charged"
    except BudgetExceeded:
        return "refused"


def test_two_processes_cannot_both_spend_the_last_budget(ledger_location):
    PrivacyLedger(ledger_location)  # create the table before the race
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        start = manager.Barrier(2)
        with context.Pool(2) as pool:
            outcomes = pool.starmap(_try_charge, [(ledger_location, "a", start), (ledger_location, "b", start)])
    assert sorted(outcomes) == ["charged", "refused"]
    assert len(PrivacyLedger(ledger_location).charges("demo")) == 1


def _open_new_ledgers(location: str, rounds: int, opened, dropped) -> list[int | str]:
    found = []
    for _ in range(rounds):
        dropped.wait()
        try:
            found.append(len(PrivacyLedger(location).charges()))
        except Exception as error:  # noqa: BLE001 - recorded, so the other runs' rounds go on
            found.append(type(error).__name__)
        opened.wait()
    return found


def test_runs_opening_a_new_shared_ledger_at_once_all_find_its_tables(ledger_location):
    """Two clones' first runs on one new ledger: both saw no table and the later CREATE TABLE
    failed ("table charges already exists", an unexpected error in CI). Raced over 12 new ledgers."""
    rounds, runs = 12, 3
    engine = create_engine(ledger_url(ledger_location))
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(runs) as pool:
        opened, dropped = manager.Barrier(runs + 1), manager.Barrier(runs + 1)
        racing = pool.starmap_async(_open_new_ledgers, [(ledger_location, rounds, opened, dropped)] * runs)
        for _ in range(rounds):
            CHARGES.metadata.drop_all(engine)
            dropped.wait()
            opened.wait()
        assert racing.get(timeout=300) == [[0] * rounds] * runs
    engine.dispose()


def test_a_new_snapshot_of_the_same_people_draws_on_the_same_budget(ledger_location):
    ledger = PrivacyLedger(ledger_location)
    ledger.charge(charge_for(2.0, "r1"), cap=2.5)
    with pytest.raises(BudgetExceeded):
        ledger.charge(replace(charge_for(2.0, "r2"), snapshot_id="sha256:new-export"), cap=2.5)


@pytest.mark.parametrize("target, accountant", [(0.5, "prv"), (3.0, "prv"), (8.0, "prv"), (3.0, "rdp")])
def test_independent_accountant_agrees(target, accountant):
    from privflow.privacy.crosscheck import recompute

    plan = plan_dp_sgd(rows=432, batch_size=64, epochs=30, target_epsilon=target, target_delta=1e-5,
                       accountant=accountant)
    charge = replace(charge_for(1.0), accountant=accountant, noise_multiplier=plan.noise_multiplier,
                     sample_rate=plan.sample_rate, steps=plan.steps, epsilon=plan.epsilon)
    (row,) = recompute([charge], cap=10.0)
    if accountant == "prv":  # both tight estimates: PLD vs PRV within 3%
        assert row.relative_gap <= 0.03 and row.problems == []
    assert row.rdp >= row.pld  # RDP is never below the tight bound


def test_cross_check_flags_a_tampered_epsilon_and_checks_the_composition():
    from privflow.privacy.crosscheck import recompute

    honest = [charge_for(2.0, "r1"), charge_for(1.0, "r2")]
    rows = recompute(honest, cap=10.0)
    assert len(rows) == 3 and all(not r.problems for r in rows)  # two runs and their composition
    understated = [replace(honest[0], epsilon=honest[0].epsilon * 0.9)]
    assert "apart" in recompute(understated, cap=10.0)[0].problems[0]


def test_entries_are_authenticated_under_a_key_the_ledger_does_not_hold(ledger_location):
    """Deleting a row and rebuilding the chain with the published recipe no longer verifies."""
    ledger = PrivacyLedger(ledger_location, key=b"k" * 32)
    for i in range(3):
        ledger.charge(charge_for(1.0, f"r{i}"), cap=10.0)
    assert ledger.verify() == []
    engine = create_engine(ledger.url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM charges WHERE seq = 2"))
        rows = conn.execute(text("SELECT * FROM charges ORDER BY seq")).mappings().all()
        prev = GENESIS
        for row in rows:  # an attacker's rebuild: every tag recomputed, with a key of their own
            rebuilt = entry_hash(Charge(*(row[f.name] for f in fields(Charge))), prev, b"guess" * 8)
            conn.execute(text("UPDATE charges SET prev_hash = :p, entry_hash = :h WHERE seq = :s"),
                         {"p": prev, "h": rebuilt, "s": row["seq"]})
            prev = rebuilt
    problems = ledger.verify()
    assert problems and all("do not match its authentication tag" in p for p in problems)
    assert PrivacyLedger(ledger_location, key=b"other" * 8).verify() != []  # another keyring's key fails too


def test_anchors_catch_a_cut_tail_and_a_reset_that_the_chain_cannot(ledger_location, tmp_path):
    ledger = PrivacyLedger(ledger_location, key=b"k" * 32)
    for i in range(2):
        ledger.charge(charge_for(1.0, f"r{i}"), cap=10.0)
    anchors = [("metrics/demo/train.json", ledger.anchor("r1")), ("reports/demo/runs/r0.json", ledger.anchor("r0"))]
    assert anchors[0][1].seq == 2 and anchors[0][1].budget_entries == 2
    assert ledger.verify(anchors) == []
    with create_engine(ledger.url).begin() as conn:
        conn.execute(text("DELETE FROM charges WHERE seq = 2"))
    assert ledger.verify() == []  # a cut tail leaves a valid chain
    (problem,) = ledger.verify(anchors)
    assert problem.startswith("metrics/demo/train.json records ledger entry 2") and "does not hold it" in problem
    reset = PrivacyLedger(str(tmp_path / "fresh.sqlite"), key=b"k" * 32)  # a deleted ledger file comes back empty
    assert len(reset.verify(anchors)) == 2


def test_a_snapshot_cannot_get_a_second_budget_under_a_new_name(ledger_location):
    ledger = PrivacyLedger(ledger_location)
    ledger.charge(charge_for(1.0, "r1", dataset="payroll"), cap=10.0)
    renamed = replace(charge_for(1.0, "r2", dataset="payroll_2026"), snapshot_id="sha256:snapshot-of-payroll")
    with pytest.raises(BudgetExceeded, match=r"already charged under budget 'payroll'.*declare `budget: payroll`"):
        ledger.charge(renamed, cap=10.0)
    with pytest.raises(BudgetExceeded, match="already charged under budget 'payroll'"):
        ledger.check(renamed, cap=10.0)
    assert ledger.count() == 1
    ledger.charge(replace(renamed, dataset="payroll"), cap=10.0)  # declared as the same budget: it shares it
    assert ledger.budget("payroll", cap=10.0).runs == 2 and ledger.verify() == []


def test_verify_names_a_snapshot_charged_under_two_budgets(ledger_location):
    ledger = PrivacyLedger(ledger_location)
    ledger.charge(charge_for(1.0, "r1", dataset="a"), cap=10.0)
    with create_engine(ledger.url).begin() as conn:  # as an older privflow could have written it
        row = conn.execute(text("SELECT entry_hash FROM charges")).scalar_one()
        second = replace(charge_for(1.0, "r2", dataset="b"), snapshot_id="sha256:snapshot-of-a")
        conn.execute(CHARGES.insert().values(**asdict(second), prev_hash=row, entry_hash=entry_hash(second, row, ledger.key)))
    assert ledger.verify() == [f"snapshot {'sha256:snapshot-of-a'[:19]} is charged under budgets ['a', 'b']: one "
                               "population, two budgets (declare one `budget:` for both entries)"]


def test_a_postgresql_role_with_insert_and_select_only_can_charge_but_never_edit(postgres_server):
    import uuid

    from sqlalchemy.exc import ProgrammingError

    name = f"ledger_{uuid.uuid4().hex[:12]}"
    with create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin = PrivacyLedger(f"{postgres_server}/{name}")  # the owner creates the table
    role = f"runs_{uuid.uuid4().hex[:8]}"
    with admin.engine.begin() as conn:  # as infra/README.md grants it
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(text("REVOKE ALL ON charges FROM PUBLIC"))
        conn.execute(text(f"GRANT SELECT, INSERT ON charges TO {role}"))
        conn.execute(text(f"GRANT USAGE ON SEQUENCE charges_seq_seq TO {role}"))
    host = postgres_server.split("@", 1)[1]
    runs = PrivacyLedger(f"postgresql+psycopg://{role}@{host}/{name}")
    runs.charge(charge_for(1.0, "r1"), cap=10.0)
    runs.charge(charge_for(1.0, "r2"), cap=10.0)
    assert runs.count() == 2 and runs.verify([("test", runs.anchor("r2"))]) == []
    for statement in ("UPDATE charges SET epsilon = 0.01", "DELETE FROM charges"):
        with pytest.raises(ProgrammingError, match="permission denied"), runs.engine.begin() as conn:
            conn.execute(text(statement))
    assert runs.count() == 2


def test_displays_read_only_authentic_memo_entries_and_a_charge_never_does(ledger_location, tmp_path, monkeypatch):
    """status, budget show and the plan read earlier compositions from EPSILON_MEMO (no Opacus
    import), each entry tagged with the ledger's key: an edited entry is ignored. The charge
    composes afresh, so even an entry tagged under the right key cannot let a run overspend."""
    import json

    from privflow.privacy.accounting import EPSILON_MEMO, _tag

    monkeypatch.chdir(tmp_path)
    ledger = PrivacyLedger(ledger_location)
    first = ledger.charge(charge_for(2.0, "r1"), cap=2.5)  # a second one would compose to 2.65
    memo = json.loads(EPSILON_MEMO.read_text())
    (key, entry), = memo.items()  # the charge recorded its composition
    assert entry["epsilon"] == pytest.approx(first.spent)
    assert ledger.budget("demo", 2.5, from_memo=True).spent == pytest.approx(first.spent)
    EPSILON_MEMO.write_text(json.dumps({key: {**entry, "epsilon": 0.001}}))  # edited without the key
    assert ledger.budget("demo", 2.5, from_memo=True).spent == pytest.approx(first.spent)  # ignored
    EPSILON_MEMO.write_text(json.dumps({key: {"epsilon": 0.001, "tag": _tag(ledger.key, key, 0.001)}}))
    assert ledger.budget("demo", 2.5, from_memo=True).spent == 0.001  # read: the display loads no Opacus
    assert ledger.budget("demo", 2.5).spent == pytest.approx(first.spent)  # the budget itself composes
    with pytest.raises(BudgetExceeded):
        ledger.charge(charge_for(2.0, "r2"), cap=2.5)
    assert [c.run_id for c in ledger.charges("demo")] == ["r1"]


def test_a_run_waits_for_another_runs_long_charge_instead_of_failing(tmp_path):
    """A charge holds SQLite's write lock while it composes (seconds on a loaded machine); the
    driver's default 5 s wait made a second run fail with an unexpected "database is locked"."""
    import sqlite3
    import threading
    import time

    location = tmp_path / "ledger.sqlite"
    PrivacyLedger(location)
    holder = sqlite3.connect(location, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # readers wait too, as during a charge's commit
    release = threading.Timer(6.5, holder.rollback)
    release.start()
    started = time.monotonic()
    try:
        assert PrivacyLedger(location).charges() == []
    finally:
        release.join()
        holder.close()
    assert time.monotonic() - started > 6


def test_anchors_are_looked_for_beside_a_metrics_file_outside_the_project(tmp_path, monkeypatch, vault):
    """A train stage run by hand with --metrics outside the project: its dvc.lock and git hold
    no such file, so those places are looked at and found empty (it used to fail unexpectedly)."""
    from privflow.budget import find_anchors

    project, outside = tmp_path / "project", tmp_path / "elsewhere" / "train.json"
    project.mkdir()
    monkeypatch.chdir(project)
    (project / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    anchors, empty = find_anchors(vault, "demo", metrics=outside)
    assert anchors == []
    assert f"{outside} in the DVC cache (dvc.lock)" in empty and f"{outside} at git HEAD" in empty
