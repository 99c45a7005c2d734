"""One plain (non-private) training pass over public data (public pretraining)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader


def run_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer) -> float:
    """One non-private pass; returns the mean training loss."""
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for features, labels in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(features), labels)
        loss.backward()
        optimizer.step()
        if len(labels):
            losses.append(loss.item())
    return sum(losses) / max(len(losses), 1)
