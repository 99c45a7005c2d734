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
