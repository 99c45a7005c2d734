"""The budget ledger on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import multiprocessing
from dataclasses import replace

import pytest
from sqlalchemy import create_engine, text

from components.errors import BudgetExceeded
from components.privacy.accounting import composed_epsilon, plan_dp_sgd
from components.privacy.ledger import Charge, PrivacyLedger


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


def test_a_new_snapshot_of_the_same_people_draws_on_the_same_budget(ledger_location):
    ledger = PrivacyLedger(ledger_location)
    ledger.charge(charge_for(2.0, "r1"), cap=2.5)
    with pytest.raises(BudgetExceeded):
        ledger.charge(replace(charge_for(2.0, "r2"), snapshot_id="sha256:new-export"), cap=2.5)


@pytest.mark.parametrize("target, accountant", [(0.5, "prv"), (3.0, "prv"), (8.0, "prv"), (3.0, "rdp")])
def test_independent_accountant_agrees(target, accountant):
    from components.privacy.crosscheck import recompute

    plan = plan_dp_sgd(rows=432, batch_size=64, epochs=30, target_epsilon=target, target_delta=1e-5,
                       accountant=accountant)
    charge = replace(charge_for(1.0), accountant=accountant, noise_multiplier=plan.noise_multiplier,
                     sample_rate=plan.sample_rate, steps=plan.steps, epsilon=plan.epsilon)
    (row,) = recompute([charge], cap=10.0)
    if accountant == "prv":  # both tight estimates: PLD vs PRV within 3%
        assert row.relative_gap <= 0.03 and row.problems == []
    assert row.rdp >= row.pld  # RDP is never below the tight bound


def test_cross_check_flags_a_tampered_epsilon_and_checks_the_composition():
    from components.privacy.crosscheck import recompute

    honest = [charge_for(2.0, "r1"), charge_for(1.0, "r2")]
    rows = recompute(honest, cap=10.0)
    assert len(rows) == 3 and all(not r.problems for r in rows)  # two runs and their composition
    understated = [replace(honest[0], epsilon=honest[0].epsilon * 0.9)]
    assert "apart" in recompute(understated, cap=10.0)[0].problems[0]
