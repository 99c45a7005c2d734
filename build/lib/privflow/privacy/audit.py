"""Empirical privacy audit in one training run (Steinke, Nasr & Jagielski, NeurIPS 2023).

m synthetic canaries are drawn; each joins the training set independently with probability
1/2. After training, every canary is scored by its loss (members should fit better); the k
best-scored are guessed "in", the k worst "out". If training is (ε, δ)-DP, the number of
correct guesses is dominated by Binomial(2k, e^ε / (1 + e^ε)) (their Theorem 1, δ-term
neglected: at δ ≤ 1e-5 and a few thousand canaries it is below the binomial's resolution).
The largest ε rejected at the chosen confidence is an empirical lower bound; above the
accounted ε it means an accounting or sampling bug, and the gate fails.

Canaries are out-of-distribution points (features uniform in [-4, 4], labels random): the
strongest membership signal available in one run, and not anyone's data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

GUESS_SIZES = (25, 50, 100, 200)  # k: tried together, paid for with a Bonferroni correction
CANARY_RANGE = 4.0


@dataclass(frozen=True)
class Canaries:
    features: np.ndarray
    labels: np.ndarray
    included: np.ndarray  # Poisson inclusion, probability 1/2 each


@dataclass(frozen=True)
class AuditResult:
    canaries: int
    included: int
    guesses: int
    correct: int
    confidence: float
    epsilon_lower_bound: float
    claimed_epsilon: float

    @property
    def passed(self) -> bool:
        return bool(self.epsilon_lower_bound <= self.claimed_epsilon)

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def draw_canaries(count: int, n_features: int, n_classes: int, rng: np.random.Generator) -> Canaries:
    return Canaries(rng.uniform(-CANARY_RANGE, CANARY_RANGE, (count, n_features)).astype(np.float32),
                    rng.integers(0, n_classes, count).astype(np.int64), rng.random(count) < 0.5)


def epsilon_lower_bound(correct: int, guesses: int, alpha: float) -> float:
    """Largest ε with P[Binomial(guesses, e^ε/(1+e^ε)) >= correct] < alpha (0 if none)."""
    # scipy.stats costs ~0.7 s: only an audited run loads it
    from scipy.stats import binom

    def tail(epsilon: float) -> float:
        return binom.sf(correct - 1, guesses, 1 / (1 + math.exp(-epsilon)))
    if guesses == 0 or tail(0.0) >= alpha:
        return 0.0
    low, high = 0.0, 50.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if tail(middle) < alpha else (low, middle)
    return low


@torch.no_grad()
def audit(model: nn.Module, canaries: Canaries, claimed_epsilon: float, confidence: float = 0.95) -> AuditResult:
    model.eval()
    losses = nn.functional.cross_entropy(model(torch.from_numpy(canaries.features)),
                                         torch.from_numpy(canaries.labels), reduction="none")
    ranked = np.argsort(losses.numpy())  # lowest loss first: most likely members
    alpha = (1 - confidence) / len(GUESS_SIZES)
    best = (0.0, 0, 0)
    for k in (k for k in GUESS_SIZES if 2 * k <= len(ranked)):
        correct = int(canaries.included[ranked[:k]].sum() + (~canaries.included[ranked[-k:]]).sum())
        best = max(best, (epsilon_lower_bound(correct, 2 * k, alpha), 2 * k, correct))
    bound, guesses, correct = best
    return AuditResult(len(ranked), int(canaries.included.sum()), guesses, correct, confidence, float(bound),
                       float(claimed_epsilon))
