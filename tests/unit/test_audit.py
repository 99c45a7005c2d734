"""The one-run empirical audit: exact on the binomial, and a gate that catches a broken trainer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from torch.utils.data import TensorDataset

from privflow.privacy.accounting import DpSgdPlan, plan_dp_sgd
from privflow.privacy.audit import audit, draw_canaries, epsilon_lower_bound, p_value
from privflow.settings import TrainSettings
from privflow.training.loop import train_private


def test_bound_is_exact_when_every_guess_is_right():
    # P[Bin(n, p) >= n] = p^n = alpha  =>  p = alpha^(1/n), epsilon = log(p / (1 - p))
    p = 0.05 ** (1 / 50)
    assert epsilon_lower_bound(50, 50, 0.05) == pytest.approx(math.log(p / (1 - p)), abs=1e-6)


def test_bound_is_zero_for_chance_and_grows_with_evidence():
    assert epsilon_lower_bound(25, 50, 0.05) == 0.0
    bounds = [epsilon_lower_bound(c, 100, 0.05) for c in (60, 70, 80, 90, 100)]
    assert bounds == sorted(bounds) and bounds[0] < bounds[-1]


def test_the_delta_term_is_the_papers_by_hand():
    # 2 of 2 right at epsilon 0: tail P[Bin(2, 1/2) >= 2] = 1/4; spread max(P[Bin = 1] / 1,
    # (P[Bin = 1] + P[Bin = 0]) / 2) = max(1/2, 3/8) = 1/2; plus 1/2 * delta * 2m = 0.1
    assert p_value(2, 2, 0.0) == pytest.approx(0.25)
    assert p_value(2, 2, 0.0, canaries=10, delta=0.01) == pytest.approx(0.35)


def test_delta_only_ever_lowers_the_bound():
    # 60 of 100 right rejects epsilon 0 at 5% on the binomial alone (P = 0.028), but not once
    # delta's share is counted for 1,000 canaries at delta 1e-3
    assert epsilon_lower_bound(60, 100, 0.05) > 0 and epsilon_lower_bound(60, 100, 0.05, 1000, 1e-3) == 0
    for correct in (70, 85, 100):
        without = epsilon_lower_bound(correct, 100, 0.05)
        assert 0 < epsilon_lower_bound(correct, 100, 0.05, 1000, 1e-5) <= without


SETTINGS = TrainSettings(hidden_units=256, epochs=150, batch_size=64, learning_rate=0.5, max_grad_norm=1.0,
                         target_epsilon=0.5, target_delta=1e-5,
                         noise_seed=2026)  # one fixed draw: see AUDIT_SEED in test_text_finetune.py


def audited_run(noise_off: bool):
    data = load_breast_cancer()
    features = (data.data / (1.5 * data.data.max(axis=0))).astype(np.float32)
    canaries = draw_canaries(1000, features.shape[1], 2, np.random.default_rng(SETTINGS.noise_seed))
    train = TensorDataset(torch.from_numpy(np.concatenate([features[:432], canaries.features[canaries.included]])),
                          torch.from_numpy(np.concatenate([data.target[:432], canaries.labels[canaries.included]])))
    test = TensorDataset(torch.from_numpy(features[432:]), torch.from_numpy(data.target[432:]))
    plan = plan_dp_sgd(rows=len(train), batch_size=64, epochs=SETTINGS.epochs, target_epsilon=0.5,
                       target_delta=1e-5, accountant="prv")
    if noise_off:  # the deliberately broken trainer: clipping still on, noise switched off
        plan = DpSgdPlan(plan.accountant, 0.0, plan.sample_rate, plan.steps, plan.delta, plan.epsilon)
    model = train_private(train, test, plan, SETTINGS, 2).model
    return audit(model, canaries, plan.epsilon, plan.delta)


@pytest.mark.slow
def test_gate_fails_a_trainer_without_noise():
    result = audited_run(noise_off=True)
    assert not result.passed and result.epsilon_lower_bound > result.claimed_epsilon


@pytest.mark.slow
def test_gate_passes_the_correct_trainer():
    result = audited_run(noise_off=False)
    assert result.passed and result.epsilon_lower_bound <= result.claimed_epsilon
