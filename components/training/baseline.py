"""The non-private reference on the same split, and the plain training epoch it (and public pretraining) use."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privflow.modeling.models import accuracy, initial_model
from privflow.settings import TrainSettings


BASELINE_LEARNING_RATE = 1e-2


def run_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
              clip: float | None = None) -> float:
    """One non-private pass (baseline, public pretraining); returns the mean training loss.
    `clip` bounds the batch gradient's norm (the whole batch's: nothing private about it)."""
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for features, labels in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(features), labels)
        loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        if len(labels):
            losses.append(loss.item())
    return sum(losses) / max(len(losses), 1)


def held_back_tenth(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(held, fit): a seeded tenth of `rows` row indices held back to choose a baseline's recipe
    or learning rate on, and the rest to fit on (the DP settings of bench_text are chosen on the same)."""
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed))
    return order[: max(1, rows // 10)], order[max(1, rows // 10):]


def train_baseline(train: TensorDataset, test: TensorDataset, t: TrainSettings, n_classes: int,
                   start: dict | None = None) -> float:
    """Non-private reference on the same split: its accuracy is reported, its weights discarded.

    Same model from the same start (`start`: the public pretraining's weights the DP run
    starts from; from scratch, a baseline lost to its DP twin by up to 12 points in the test
    projects), batch size and epochs, no noise. Two standard recipes are tried, the DP run's
    own (SGD at its learning rate, the batch gradient clipped to C) and Adam at 1e-2, and the
    one better on a tenth of the training split held back is scored: either alone is poor on
    some presets (an LSTM needs Adam's steps, a small CNN diverges under Adam's early ones),
    and a weak baseline would flatter the DP model."""
    features, labels = train.tensors[:2]
    held, fit = held_back_tenth(len(labels), t.init_seed)
    best_score, best_model = -1.0, None
    for recipe in ("dp_recipe_without_noise", "adam"):
        model = initial_model(t, features.shape[1], n_classes, start)
        if recipe == "adam":
            optimizer, clip = torch.optim.Adam(model.parameters(), lr=BASELINE_LEARNING_RATE), None
        else:
            optimizer, clip = torch.optim.SGD(model.parameters(), lr=t.learning_rate, momentum=0.9), t.max_grad_norm
        loader = DataLoader(TensorDataset(features[fit], labels[fit]), batch_size=t.batch_size, shuffle=True)
        for _ in range(t.epochs):
            run_epoch(model, loader, optimizer, clip)
        score = accuracy(model, features[held], labels[held])
        if score > best_score:
            best_score, best_model = score, model
    return accuracy(best_model, *test.tensors[:2])
