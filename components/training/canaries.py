"""The empirical privacy audit inside a run: canaries join the training rows, and a model that
leaks more than the accountant claims is not released."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from privflow.errors import PrivacyError
from privflow.privacy.audit import Canaries, audit


def with_canaries(train: TensorDataset, canaries: Canaries) -> TensorDataset:
    """The audit's canaries join the training rows, each its own privacy unit."""
    features, labels, units = train.tensors
    added = int(canaries.included.sum())
    return TensorDataset(torch.cat([features, torch.from_numpy(canaries.features[canaries.included])]),
                         torch.cat([labels, torch.from_numpy(canaries.labels[canaries.included])]),
                         torch.cat([units, (int(units.max()) + 1 if len(units) else 0) + torch.arange(added)]))


def audit_gate(model: nn.Module, canaries: Canaries | None, claimed: tuple[float, float],
               confidence: float) -> dict | None:
    """The empirical audit, when canaries were drawn; refuses a model that leaks more than the
    claimed (epsilon, delta)."""
    if canaries is None:
        return None
    result = audit(model, canaries, *claimed, confidence)
    if not result.passed:
        raise PrivacyError(
            f"empirical audit failed: {result.correct} of {result.guesses} membership guesses on "
            f"{result.canaries} canaries give epsilon >= {result.epsilon_lower_bound:.3f} at "
            f"{result.confidence:.0%} confidence, above the accounted {result.claimed_epsilon:.3f}: an accounting "
            f"or sampling bug, or the {1 - result.confidence:.0%} chance that train.audit_confidence leaves a "
            "correct trainer; the model is not released")
    return result.as_dict()
