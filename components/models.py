"""Model presets. Each must pass Opacus' ModuleValidator; errors are surfaced, never fixed silently."""

from __future__ import annotations

import torch
from opacus.validators import ModuleValidator
from torch import nn

from components.errors import PrivacyError


def build_model(preset: str, n_features: int, n_classes: int, hidden_units: int) -> nn.Module:
    if preset != "mlp":
        raise PrivacyError(f"unknown model preset '{preset}' (train.model); available: mlp")
    model = nn.Sequential(
        nn.Linear(n_features, hidden_units), nn.Tanh(), nn.Linear(hidden_units, n_classes)
    )
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise PrivacyError(f"model preset '{preset}' is not DP-compatible: {errors}")
    return model


@torch.no_grad()
def accuracy(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    return float((model(features).argmax(dim=1) == labels).float().mean())
