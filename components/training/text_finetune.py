"""DP fine-tuning of a pretrained text encoder: the head, the last k layers, or all layers.

The encoder (privflow.modeling.text_encoder) is split where training starts. Its frozen
bottom (the embeddings and the first layers) runs once over every text, without gradients,
and its output stays in memory: frozen layers cost a forward pass per step otherwise, which
on this CPU is most of a step (PERFORMANCE-NOTES). That output is a deterministic function
of each text alone and of public weights, so training on it is DP-SGD on the same samples:
the guarantee covers the trained parameters as it would end to end.

The trainable top (`EncoderTop`: the last k pretrained BERT layers, masked mean pooling as the
encoder was pretrained with, a linear classifier) is made of Linear and LayerNorm layers only,
so privflow's own DP step clips it exactly (privflow.privacy.dp_sgd), through the same
loop, accountant and noise as every other model. Modes:
- `head`: k = 0, only the classifier on the pooled pretrained features;
- `last_layers`: the last k layers and the classifier;
- `all_layers`: every transformer layer; the token and position embeddings stay frozen by
  design (11.7 M of the 22.6 M parameters, a sparse lookup whose DP noise would swamp it,
  and the part pretraining got most right).

The top's input packs the attention mask as a last channel ([rows, tokens, width + 1]), so
the loop's one tensor of features per row still holds everything a row needs.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

FineTune = Literal["head", "last_layers", "all_layers"]


def trainable_layers(mode: FineTune, last_k: int, depth: int) -> int:
    return {"head": 0, "last_layers": min(last_k, depth), "all_layers": depth}[mode]


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """BERT's attention mask: 0 where a token is, the dtype's minimum where padding is."""
    return (1.0 - mask.to(dtype))[:, None, None, :] * torch.finfo(dtype).min


class EncoderTop(nn.Module):
    """The trained part: copies of the encoder's last layers, mean pooling, a classifier."""

    def __init__(self, layers: list[nn.Module], width: int, n_classes: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for layer in layers)
        self.classifier = nn.Linear(width, n_classes)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        hidden, mask = packed[..., :-1], packed[..., -1]
        additive = _additive_mask(mask, hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, additive)
        weights = mask[..., None]
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.classifier(pooled)


@torch.no_grad()
def frozen_outputs(encoder: nn.Module, ids: torch.Tensor, mask: torch.Tensor, frozen_layers: int,
                   batch: int = 64) -> torch.Tensor:
    """The frozen bottom's output for every text, the mask as a last channel (in memory only:
    it is as sensitive as the texts)."""
    encoder.eval()
    parts = []
    for start in range(0, len(ids), batch):
        chunk_ids, chunk_mask = ids[start:start + batch], mask[start:start + batch]
        hidden = encoder.embeddings(input_ids=chunk_ids)
        additive = _additive_mask(chunk_mask, hidden.dtype)
        for layer in encoder.encoder.layer[:frozen_layers]:
            hidden = layer(hidden, additive)
        parts.append(torch.cat([hidden, chunk_mask[..., None].to(hidden.dtype)], dim=-1))
    return torch.cat(parts) if parts else torch.empty(0, ids.shape[1], encoder.config.hidden_size + 1)


def encoder_top(encoder: nn.Module, mode: FineTune, last_k: int, n_classes: int, seed: int = 0) -> tuple[EncoderTop, int]:
    """The trainable top for this mode, and how many layers stay frozen below it."""
    layers = list(encoder.encoder.layer)
    k = trainable_layers(mode, last_k, len(layers))
    torch.manual_seed(seed)  # the classifier's initial weights only
    top = EncoderTop(layers[len(layers) - k:], encoder.config.hidden_size, n_classes)
    return top, len(layers) - k


def train_baseline(top: EncoderTop, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                   epochs: int, batch_size: int, seed: int = 0,
                   learning_rates: tuple[float, ...] = (1e-2, 1e-3, 1e-4)) -> tuple[float, float]:
    """The non-private reference for the same top on the same split: Adam at each of a few
    learning rates, the best on a held-back tenth of the training split scored on the test
    split, so the baseline is a real upper reference and never a weak one. (test accuracy,
    chosen learning rate)."""
    from privflow.modeling.models import accuracy

    features, labels = train
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    held, fit = order[: max(1, len(labels) // 10)], order[max(1, len(labels) // 10):]
    best = (-1.0, None, 0.0)
    for rate in learning_rates:
        model = copy.deepcopy(top)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=rate)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            model.train()
            for batch in fit[torch.randperm(len(fit), generator=generator)].split(batch_size):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(features[batch]), labels[batch]).backward()
                optimizer.step()
        score = accuracy(model, features[held], labels[held])
        if score > best[0]:
            best = (score, model, rate)
    return accuracy(best[1], *test), best[2]
