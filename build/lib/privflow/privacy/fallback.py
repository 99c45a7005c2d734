"""Opacus' engine for the layers privflow's DP step does not cover.

Opacus keeps a per-sample gradient function for each layer type it knows (Embedding,
grouped convolutions, GroupNorm, InstanceNorm, RNN cells, ...) and falls back to functorch
(a stateless replay of the layer under vmap) for any other module without buffers. privflow
calls the same functions on the input and output gradient it has already captured, so a
user's custom model trains and its clipping stays one norm over all its layers.
"""

from __future__ import annotations

import torch
from torch import nn


def opacus_sampler(module: nn.Module):
    """Opacus' per-sample gradient function for this layer, or None. Imported only for a model
    that needs it: Opacus' package init costs seconds."""
    from opacus.grad_sample import GradSampleModule
    from opacus.grad_sample.functorch import ft_compute_per_sample_gradient

    registered = GradSampleModule.GRAD_SAMPLERS.get(type(module))
    if registered is not None:
        return registered
    if type(module) is nn.EmbeddingBag or any(True for _ in module.buffers()):
        return None  # functorch replays the layer statelessly: it cannot carry buffers
    return ft_compute_per_sample_gradient


def opacus_per_row_gradients(module: nn.Module, own: list[nn.Parameter], calls: list,
                             grads: list[torch.Tensor]) -> dict[nn.Parameter, torch.Tensor]:
    """Per-row gradients of `own` (the layer's trainable parameters no privflow layer owns),
    summed over the layer's calls (a layer applied twice, e.g. tied weights)."""
    sampler = opacus_sampler(module)
    totals: dict[nn.Parameter, torch.Tensor] = {}
    for (inputs, _), g in zip(calls, grads):
        per_row = sampler(module, inputs, g.detach())
        for p in own:  # functorch's sampler also returns the children's parameters: theirs are clipped elsewhere
            totals[p] = per_row[p] if p not in totals else totals[p] + per_row[p]
    return totals
