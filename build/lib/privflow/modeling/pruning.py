"""Structured (whole neurons) and magnitude pruning, on the DP model only; synthetic inputs for measuring it.

Post-processing of a DP model spends no privacy only if it reads no private data: where
data is needed (calibration, fidelity, latency) inputs are drawn uniformly from [0, 1]^features,
the range the schema's declared bounds scale every feature to.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune


def synthetic_inputs(n_features: int, rows: int, seed: int = 0) -> torch.Tensor:
    """Uniform on [0, 1]^features: the scaled feature space, carrying no information about anyone."""
    return torch.from_numpy(np.random.default_rng(seed).random((rows, n_features), dtype=np.float32))


def prune_neurons(model: nn.Sequential, amount: float) -> nn.Sequential:
    """Structured pruning: drop the `amount` hidden units with the smallest incoming L2 norm
    from every Linear -> activation -> Linear pair, so the layers really get smaller."""
    layers = list(model)
    for index, layer in enumerate(layers):
        following = next((i for i in range(index + 1, len(layers)) if isinstance(layers[i], nn.Linear)), None)
        if not isinstance(layer, nn.Linear) or following is None or amount == 0:
            continue
        keep = max(1, round(layer.out_features * (1 - amount)))
        kept = torch.linalg.vector_norm(layer.weight, dim=1).argsort(descending=True)[:keep].sort().values
        layers[index] = _linear(layer.weight[kept], layer.bias[kept])
        after = layers[following]
        layers[following] = _linear(after.weight[:, kept], after.bias)
    return nn.Sequential(*layers).eval()


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


def prune_magnitude(model: nn.Module, amount: float) -> nn.Module:
    """Zero the `amount` smallest-magnitude weights across all Linear and Conv layers, permanently."""
    layers = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    if amount > 0:
        prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=amount)
        for module, name in layers:
            prune.remove(module, name)
    return model


def sparsity(model: nn.Module) -> float:
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    return float(sum((w == 0).sum() for w in weights) / sum(w.numel() for w in weights))


def weight_bytes(model: nn.Module, bytes_per_weight: int) -> int:
    """Weights at the given width plus fp32 biases: the payload, without any file format."""
    return sum(p.numel() * (bytes_per_weight if name.endswith("weight") else 4) for name, p in model.named_parameters())
