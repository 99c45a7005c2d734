"""Plan a DP-SGD run before it touches data: noise, sample rate, steps, epsilon.

The plan is computed exactly as Opacus will run it (Poisson sampling with rate
1/ceil(N/B), ceil(N/B) steps per epoch), so the epsilon charged before training equals the
epsilon Opacus' accountant reports after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from privflow.errors import PrivacyError


def create_accountant(mechanism: str):
    """Opacus' accountant, imported when first needed: opacus' package init loads torch and its
    privacy engine (seconds), which `privflow budget show` and `--help` must not pay for."""
    from opacus.accountants import create_accountant as create

    return create(mechanism=mechanism)


@dataclass(frozen=True)
class DpSgdPlan:
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    epsilon: float  # what the accountant gives for exactly these parameters


def epsilon_for(accountant: str, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    counter = create_accountant(mechanism=accountant)
    counter.history = [(noise_multiplier, sample_rate, steps)]
    return float(counter.get_epsilon(delta=delta))


def plan_dp_sgd(*, rows: int, batch_size: int, epochs: int, target_epsilon: float,
                target_delta: float, accountant: str) -> DpSgdPlan:
    if rows < 1:
        raise PrivacyError("no training rows: nothing to train on")
    if target_delta >= 1 / rows:
        raise PrivacyError(
            f"train.target_delta {target_delta:g} must be < 1/N = {1 / rows:.3g} "
            f"(N = {rows} training rows): a larger delta allows releasing a whole row"
        )
    steps_per_epoch = math.ceil(rows / batch_size)
    sample_rate = 1 / steps_per_epoch
    steps = epochs * steps_per_epoch
    from opacus.accountants.utils import get_noise_multiplier

    try:
        noise = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=target_delta,
                                     sample_rate=sample_rate, steps=steps, accountant=accountant)
    except ValueError as error:
        # e.g. GDP's central-limit approximation has no root for a few large steps
        raise PrivacyError(
            f"the {accountant} accountant finds no noise level for epsilon {target_epsilon} over "
            f"{steps} steps at sample rate {sample_rate:.4g} ({error}); use accountant prv, "
            "or change epochs or batch size"
        ) from None
    epsilon = epsilon_for(accountant, noise, sample_rate, steps, target_delta)
    return DpSgdPlan(accountant, noise, sample_rate, steps, target_delta, epsilon)


def composed_epsilon(mechanisms: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of running every (noise, sample rate, steps) mechanism on the same people,
    composed by the PRV accountant at the given delta (0 when nothing has run)."""
    if not mechanisms:
        return 0.0
    counter = create_accountant(mechanism="prv")
    counter.history = list(mechanisms)
    return float(counter.get_epsilon(delta=delta))
