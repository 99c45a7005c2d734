import pytest
from hypothesis import given, settings, strategies as st

from privflow.errors import PrivacyError
from privflow.privacy.accounting import epsilon_for, plan_dp_sgd


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


def test_the_memoized_rdp_orders_give_opacus_own_numbers():
    """The per-step RDP the PRV accountant sizes its domain with is kept per process: the same
    values as Opacus' own function, computed once for a repeated (sample rate, noise, order)."""
    from opacus.accountants.analysis import rdp

    epsilon_for("prv", 1.1, 0.02, 50, 1e-5)  # memoizes
    memoized = rdp._compute_rdp
    hits = memoized.cache_info().hits
    for order in (1.5, 2.7, 12, 63):
        assert memoized(0.02, 1.1, order) == memoized.__wrapped__(0.02, 1.1, order)
    assert memoized.cache_info().hits == hits + 4  # the accountant's orders, all computed already
    assert epsilon_for("prv", 1.1, 0.02, 50, 1e-5) == epsilon_for("prv", 1.1, 0.02, 50, 1e-5)


def test_a_remembered_noise_level_is_used_only_where_the_search_would_end(tmp_path, monkeypatch):
    """The plan's noise level is remembered per project (the CLI's plan, then the train stage,
    search for the same one); an edited entry that would spend more than the target, or noise
    the model more than the search would, or is not a number, is searched again."""
    import json

    from privflow.privacy import accounting

    monkeypatch.chdir(tmp_path)
    args = dict(rows=600, batch_size=60, epochs=4, target_epsilon=2.0, target_delta=1e-5, accountant="prv")
    fresh = plan_dp_sgd(**args)
    searches = []
    real_search = accounting._search_noise
    monkeypatch.setattr(accounting, "_search_noise", lambda *a: searches.append(a) or real_search(*a))
    assert plan_dp_sgd(**args) == fresh and searches == []  # remembered, and confirmed by the accountant
    (key,) = json.loads(accounting.NOISE_MEMO.read_text())
    for edited in (fresh.noise_multiplier * 0.8, fresh.noise_multiplier * 1.2, "1.5", -1.0, float("nan")):
        accounting.NOISE_MEMO.write_text(json.dumps({key: edited}))
        assert plan_dp_sgd(**args) == fresh, edited
    assert len(searches) == 5
    assert json.loads(accounting.NOISE_MEMO.read_text()) == {key: fresh.noise_multiplier}  # mended


def statement_of(bound: int, dropped: int = 0) -> str:
    from privflow.reporting.statements import privacy_statement

    training = {"privacy": {"sample_rate": 0.01, "noise_multiplier": 1.1, "max_grad_norm": 1.0, "steps": 300,
                            "epsilon_spent": 2.9, "delta": 1e-5, "accountant": "prv", "epsilon": 3.0,
                            "privacy_unit": "patient_id", "rows_per_unit_bound": bound},
                "rows": {"train": 900, "test": 100, "dropped_by_unit_bound": dropped}}
    return " ".join(privacy_statement(training))


def test_the_statement_names_the_declared_bound_and_what_the_guarantee_leaves_out():
    user_level = statement_of(bound=4, dropped=17)
    assert "Training kept at most 4 records per patient_id" in user_level and "17 records left out" in user_level
    assert "whether a patient_id has more than one record" in user_level  # listed as not covered
    assert "no patient_id has more than one record (checked before training)" in statement_of(bound=1)
