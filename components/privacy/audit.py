"""Empirical privacy audit in one training run (Steinke, Nasr & Jagielski, NeurIPS 2023).

m synthetic canaries are drawn; each joins the training set independently with probability
1/2. After training, every canary is scored by its loss (members should fit better); the k
best-scored are guessed "in", the k worst "out". If training is (ε, δ)-DP, the chance of v or
more correct guesses is at most P[Binomial(2k, e^ε / (1 + e^ε)) >= v] plus a δ-term, 2mδ
times the binomial's largest mean mass just below v (their Theorem 3 and Appendix D). The
largest ε rejected at the chosen confidence is an empirical lower bound; above the accounted
ε it means an accounting or sampling bug, or the chance the confidence leaves (at 95%, a
correct trainer fails in at most 1 run in 20, and in far fewer when, as here, its ε is loose
for this attack: no noised run of bench_audit came near).

Canaries are out-of-distribution inputs with random labels: the strongest membership signal
available in one run, and not anyone's data. For a tabular model, feature points uniform in
[-4, 4] (features are scaled to [0, 1]); for a text model, texts no one wrote (words of
random letters), which go through the model's own tokenizer and frozen encoder as every
text does, so the audit scores the trained top on the inputs it trains on.
"""

from __future__ import annotations

import math
import string
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn

GUESS_SIZES = (25, 50, 100, 200)  # k: tried together, paid for with a Bonferroni correction
CANARY_RANGE = 4.0
CANARY_WORDS = (6, 3, 9)  # 6 words of 3 to 8 random letters: of 4, 6 and 12, the strongest signal measured


@dataclass(frozen=True)
class Canaries:
    features: np.ndarray  # what the model reads: feature points, or (text) the frozen encoder's output
    labels: np.ndarray
    included: np.ndarray  # Poisson inclusion, probability 1/2 each
    kind: str = f"feature points uniform in [-{CANARY_RANGE:g}, {CANARY_RANGE:g}]"
    texts: tuple[str, ...] = ()  # text canaries as drawn, before the encoder turns them into features

    def as_features(self, features: np.ndarray) -> Canaries:
        """The same canaries, as the model reads them (a text model: the frozen encoder's output)."""
        return replace(self, features=features)


@dataclass(frozen=True)
class AuditResult:
    canaries: int
    included: int
    guesses: int
    correct: int
    confidence: float
    epsilon_lower_bound: float
    claimed_epsilon: float
    canary_kind: str
    claimed_delta: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.epsilon_lower_bound <= self.claimed_epsilon)

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def draw_canaries(count: int, n_features: int, n_classes: int, rng: np.random.Generator) -> Canaries:
    return Canaries(rng.uniform(-CANARY_RANGE, CANARY_RANGE, (count, n_features)).astype(np.float32),
                    rng.integers(0, n_classes, count).astype(np.int64), rng.random(count) < 0.5)


def draw_text_canaries(count: int, n_classes: int, rng: np.random.Generator) -> Canaries:
    """Canaries for a text model: texts no one wrote, each its own words of random letters."""
    words, shortest, longest = CANARY_WORDS
    letters = np.array(list(string.ascii_lowercase))
    texts = tuple(" ".join("".join(rng.choice(letters, rng.integers(shortest, longest))) for _ in range(words))
                  for _ in range(count))
    return Canaries(np.empty((count, 0), np.float32), rng.integers(0, n_classes, count).astype(np.int64),
                    rng.random(count) < 0.5, kind=f"texts of {words} words of random letters", texts=texts)


def p_value(correct: int, guesses: int, epsilon: float, canaries: int = 0, delta: float = 0.0) -> float:
    """The chance of `correct` or more right guesses out of `guesses` on `canaries` canaries if
    training were (epsilon, delta)-DP (Steinke, Nasr & Jagielski 2023, Appendix D)."""
    # scipy.stats costs ~0.7 s: only an audited run loads it
    from scipy.stats import binom

    right = 1 / (1 + math.exp(-epsilon))  # the accuracy of epsilon-DP randomized response
    tail = float(binom.sf(correct - 1, guesses, right))
    if delta == 0 or correct == 0:
        return min(tail, 1.0)
    below = binom.pmf(np.arange(correct - 1, -1, -1), guesses, right)  # P[Bin = v - i], i = 1..v
    spread = float(np.max(np.cumsum(below) / np.arange(1, correct + 1)))
    return min(tail + spread * delta * 2 * canaries, 1.0)


def epsilon_lower_bound(correct: int, guesses: int, alpha: float, canaries: int = 0, delta: float = 0.0) -> float:
    """Largest ε whose p_value is below alpha (0 if none): with 1 - alpha confidence, training
    was not (ε, delta)-DP for any smaller ε."""
    if guesses == 0 or p_value(correct, guesses, 0.0, canaries, delta) >= alpha:
        return 0.0
    low, high = 0.0, 50.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if p_value(correct, guesses, middle, canaries, delta) < alpha else (low, middle)
    return low


@torch.no_grad()
def audit(model: nn.Module, canaries: Canaries, claimed_epsilon: float, claimed_delta: float,
          confidence: float = 0.95) -> AuditResult:
    model.eval()
    losses = nn.functional.cross_entropy(model(torch.from_numpy(canaries.features)),
                                         torch.from_numpy(canaries.labels), reduction="none")
    ranked = np.argsort(losses.numpy())  # lowest loss first: most likely members
    alpha = (1 - confidence) / len(GUESS_SIZES)
    best = (0.0, 0, 0)
    for k in (k for k in GUESS_SIZES if 2 * k <= len(ranked)):
        correct = int(canaries.included[ranked[:k]].sum() + (~canaries.included[ranked[-k:]]).sum())
        bound = epsilon_lower_bound(correct, 2 * k, alpha, len(ranked), claimed_delta)
        best = max(best, (bound, 2 * k, correct))
    bound, guesses, correct = best
    return AuditResult(len(ranked), int(canaries.included.sum()), guesses, correct, confidence, float(bound),
                       float(claimed_epsilon), canaries.kind, float(claimed_delta))
