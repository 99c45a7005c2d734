import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.errors import BudgetExceeded, PrivacyError
from components.privacy.accounting import epsilon_for, plan_dp_sgd
from components.privacy.ledger import Charge, PrivacyLedger


def charge(epsilon: float, run: str = "r1", dataset: str = "demo") -> Charge:
    return Charge(run, dataset, "patient_id", "sha256:s", "train", "DP-SGD", "prv",
                  1.1, 0.01, 100, 1e-5, epsilon, "abc", "2026-11-23T00:00:00+00:00")


def test_overspend_is_refused_with_the_numbers(tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
    ledger.charge(charge(6.0, "r1"), cap=10.0)
    with pytest.raises(BudgetExceeded, match=r"needs epsilon 5.*6 of the cap 10 is already spent \(4 left\)"):
        ledger.charge(charge(5.0, "r2"), cap=10.0)
    assert [c.run_id for c in ledger.charges("demo")] == ["r1"]  # the refusal recorded nothing
    assert ledger.budget("demo", 10.0).remaining == pytest.approx(4.0)
    ledger.charge(charge(4.0, "r3"), cap=10.0)  # exactly filling the cap is allowed


def test_budgets_are_per_dataset(tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
    ledger.charge(charge(9.0, dataset="a"), cap=10.0)
    ledger.charge(charge(9.0, dataset="b"), cap=10.0)
    assert ledger.budget("a", 10.0).spent == pytest.approx(9.0)


def test_edited_and_deleted_entries_are_detected(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger = PrivacyLedger(path)
    for i in range(3):
        ledger.charge(charge(1.0, f"r{i}"), cap=10.0)
    assert ledger.verify() == []
    with sqlite3.connect(path) as db:
        db.execute("UPDATE charges SET epsilon = 0.1 WHERE seq = 2")
    assert any("entry 2: contents do not match" in p for p in ledger.verify())
    with sqlite3.connect(path) as db:
        db.execute("UPDATE charges SET epsilon = 1.0 WHERE seq = 2")
        db.execute("DELETE FROM charges WHERE seq = 2")
    assert any("entry 3: previous-hash link broken" in p for p in ledger.verify())


def test_plan_matches_the_accountant_and_meets_target():
    plan = plan_dp_sgd(rows=432, batch_size=64, epochs=30, target_epsilon=3.0, target_delta=1e-5, accountant="prv")
    assert plan.sample_rate == pytest.approx(1 / 7) and plan.steps == 210
    assert plan.epsilon <= 3.0
    assert plan.epsilon == pytest.approx(epsilon_for("prv", plan.noise_multiplier, plan.sample_rate, plan.steps, 1e-5))


def test_rdp_is_never_tighter_than_prv():
    args = dict(noise_multiplier=1.2, sample_rate=0.01, steps=1000, delta=1e-5)
    assert epsilon_for("rdp", **args) >= epsilon_for("prv", **args)


def test_delta_must_be_below_one_over_n():
    with pytest.raises(PrivacyError, match=r"must be < 1/N .*N = 1000"):
        plan_dp_sgd(rows=1000, batch_size=10, epochs=1, target_epsilon=1.0, target_delta=1e-3, accountant="rdp")


@settings(max_examples=15, deadline=None)
@given(eps=st.floats(0.5, 10), rows=st.integers(200, 50_000), batch=st.integers(16, 512),
       epochs=st.integers(1, 20), accountant=st.sampled_from(["rdp", "gdp"]))
def test_planned_noise_never_overshoots_target(eps, rows, batch, epochs, accountant):
    try:
        plan = plan_dp_sgd(rows=rows, batch_size=min(batch, rows), epochs=epochs, target_epsilon=eps,
                           target_delta=1 / (10 * rows), accountant=accountant)
    except PrivacyError as refusal:  # GDP cannot evaluate some short runs: a refusal, not a guess
        assert accountant == "gdp" and "use accountant prv" in str(refusal)
        return
    assert plan.epsilon <= eps
