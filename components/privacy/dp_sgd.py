"""One DP-SGD step: per-sample clipping and Gaussian noise, without per-sample gradients.

Stock Opacus (hooks mode) materialises every sample's gradient for every parameter, clips
them one parameter at a time and sums them, in many small Python-driven operations; on the
small models privacy work uses, that overhead, not arithmetic, sets the step time (8-9x a
plain step for an MLP here). Ghost clipping avoids the materialisation but runs backward
twice. This engine does neither:

1. Forward hooks keep each trainable layer's input and output.
2. One `torch.autograd.grad` call gives the gradient at each layer's output (B). Weight
   gradients are never formed by autograd: they are not asked for.
3. Each sample's gradient norm comes from A and B alone. For a layer applied once per
   sample, ||b a^T||^2 = ||a||^2 ||b||^2. For a layer applied at T positions (sequences,
   convolution patches, recurrent steps) the norm is either the Gram form
   sum_ts (a_t.a_s)(b_t.b_s) or the per-sample gradient itself, whichever costs less.
4. The clipped sum of gradients is (c * B)^T A: one matrix product per layer, the same work
   as the weight gradient of a plain backward pass.

A privacy unit may own several rows (user-level DP): the rows of one unit are laid out
next to each other and their positions are concatenated, so the "sample" whose gradient is
clipped is the unit. Layers covered: Linear (any leading shape, also Opacus' RNNLinear
inside DPLSTM), Conv2d (groups 1), LayerNorm. Any other layer that owns trainable
parameters (Embedding, grouped Conv, GroupNorm, a user's own module...) falls back to Opacus'
engine for that layer alone: its registered grad sampler, or its functorch sampler for a
module it has none for, gives that layer's per-sample gradients from the same captured
input and output gradient, and they join the one per-unit norm, so clipping stays exact
over the whole model. `engines` says which engine clipped which layer; `unsupported_parameters`
names what neither covers (a module with buffers and no Opacus sampler).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from privflow.privacy.fallback import opacus_per_row_gradients, opacus_sampler
from privflow.privacy.noise import NoiseSource

_MATERIALISE_LIMIT = 1 << 25  # floats: above this, per-sample gradients are never formed


def _native_kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros" \
            and isinstance(module.padding, tuple):
        return "conv"
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1 and module.elementwise_affine:
        return "norm"
    return None


def _native_parameter_ids(modules) -> set[int]:
    return {id(p) for m in modules if _native_kind(m) for p in m.parameters(recurse=False)}


def _trainable_own(module: nn.Module, covered: set[int]) -> list[nn.Parameter]:
    return [p for p in module.parameters(recurse=False) if p.requires_grad and id(p) not in covered]


def _layer_kinds(model: nn.Module) -> dict[nn.Module, str]:
    """Each layer that owns trainable parameters, with the engine that clips them: privflow's
    kinds first; Opacus for parameters no privflow layer owns (DPLSTM registers its cells'
    weights a second time: those stay with the cells)."""
    native = {m: kind for m in model.modules() if (kind := _native_kind(m))}
    covered = _native_parameter_ids(native)
    kinds = {m: kind for m, kind in native.items() if _trainable_own(m, set())}
    kinds.update({m: "opacus" for m in model.modules()
                  if m not in native and _trainable_own(m, covered) and opacus_sampler(m)})
    return kinds


def engines(model: nn.Module) -> dict[str, list[str]]:
    """Which engine clips which trainable layer: for the report and the run's metrics."""
    kinds = _layer_kinds(model)
    used: dict[str, list[str]] = {"privflow": [], "opacus": []}
    for name, module in model.named_modules():
        if module in kinds:
            used["opacus" if kinds[module] == "opacus" else "privflow"].append(f"{name or 'model'} ({type(module).__name__})")
    return used


def unsupported_parameters(model: nn.Module) -> list[str]:
    """Trainable parameters no engine can clip. A parameter may be registered twice (DPLSTM
    exposes its cells' weights under nn.LSTM's names)."""
    covered = {id(p) for m in _layer_kinds(model) for p in m.parameters(recurse=False)}
    return [f"{name} ({type(module).__name__})"
            for module_name, module in model.named_modules()
            for name, p in module.named_parameters(prefix=module_name, recurse=False)
            if p.requires_grad and id(p) not in covered]


class _Capture:
    """Records every call of the trainable covered layers during one forward pass."""

    def __init__(self, model: nn.Module):
        self.kinds = _layer_kinds(model)
        self.layers = list(self.kinds)
        native = _native_parameter_ids(self.kinds)
        self.sampled_own = {m: _trainable_own(m, native) for m, kind in self.kinds.items() if kind == "opacus"}
        self.calls: dict[nn.Module, list[tuple]] = {}

    def _record(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        kept = [i.detach() if torch.is_tensor(i) else i for i in inputs] if self.kinds[module] == "opacus" \
            else inputs[0].detach()  # Opacus' samplers take every input (EmbeddingBag: indices and offsets)
        self.calls.setdefault(module, []).append((kept, output))

    @contextmanager
    def recording(self) -> Iterator[None]:
        self.calls = {}
        handles = [layer.register_forward_hook(self._record) for layer in self.layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


@dataclass
class _Activations:
    """One layer's inputs A and output gradients B, per unit. Linear and LayerNorm: A is
    (units, positions, D) and B (units, positions, p). Conv2d: A holds each unit's weight
    gradient and B its bias gradient, formed by one grouped convolution (groups = rows),
    which is 4x faster here than im2col and never larger than the physical batch."""

    module: nn.Module
    kind: str
    a: torch.Tensor | None
    b: torch.Tensor | None
    sampled: dict[nn.Parameter, torch.Tensor] | None = None  # kind "opacus": per-unit gradients


def _joined(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def _layer_activations(module: nn.Module, kind: str, calls: list, grads: list[torch.Tensor], units: int,
                       sampled_own: list[nn.Parameter] | None = None) -> _Activations:
    if kind == "conv":
        return _conv_gradients(module, calls, grads, units)
    if kind == "opacus":
        return _sampled_gradients(module, sampled_own, calls, grads, units)
    rows = calls[0][0].shape[0]
    if kind == "norm":
        inputs = [functional.layer_norm(x, module.normalized_shape, eps=module.eps) for x, _ in calls]
    else:
        inputs = [x for x, _ in calls]
    a = _joined([x.reshape(rows, -1, x.shape[-1]) for x in inputs], dim=1)
    b = _joined([g.reshape(rows, -1, g.shape[-1]) for g in grads], dim=1)
    return _Activations(module, kind, a.reshape(units, -1, a.shape[-1]), b.reshape(units, -1, b.shape[-1]))


def _conv_gradients(module: nn.Conv2d, calls: list, grads: list[torch.Tensor], units: int) -> _Activations:
    weights, biases = [], []
    for (x, _), g in zip(calls, grads):
        rows, channels, outputs = x.shape[0], x.shape[1], g.shape[1]
        per_row = torch.nn.grad.conv2d_weight(
            x.reshape(1, rows * channels, *x.shape[2:]), (rows * outputs, channels, *module.kernel_size),
            g.reshape(1, rows * outputs, *g.shape[2:]), module.stride, module.padding, module.dilation, groups=rows)
        weights.append(_per_unit(per_row.reshape(rows, *module.weight.shape), units))
        biases.append(_per_unit(g.sum(dim=(2, 3)), units))
    return _Activations(module, "conv", sum(weights[1:], weights[0]), sum(biases[1:], biases[0]))


def _sampled_gradients(module: nn.Module, own: list[nn.Parameter], calls: list, grads: list[torch.Tensor],
                       units: int) -> _Activations:
    per_row = opacus_per_row_gradients(module, own, calls, grads)
    return _Activations(module, "opacus", None, None, {p: _per_unit(t, units) for p, t in per_row.items()})


def _per_unit(per_row: torch.Tensor, units: int) -> torch.Tensor:
    rows = per_row.shape[0]
    return per_row if rows == units else per_row.reshape(units, rows // units, *per_row.shape[1:]).sum(dim=1)


def _sum_sq(t: torch.Tensor, dim) -> torch.Tensor:
    return torch.linalg.vector_norm(t, dim=dim).square()


def _squared_norms(layer: _Activations) -> torch.Tensor:
    """Per-unit squared norm of the layer's gradient (weight and bias), without forming it
    when that is cheaper."""
    if layer.kind == "opacus":
        return sum(_sum_sq(g.flatten(1), 1) for g in layer.sampled.values())
    module, a, b = layer.module, layer.a, layer.b
    bias = module.bias is not None and module.bias.requires_grad
    weight = module.weight.requires_grad
    if layer.kind == "conv":
        return (_sum_sq(b, 1) if bias else 0.0) + (_sum_sq(a.flatten(1), 1) if weight else 0.0)
    if layer.kind == "linear" and a.shape[1] == 1:  # one position: ||b a^T||^2 = ||a||^2 ||b||^2
        b_sq = _sum_sq(b[:, 0], 1)
        return b_sq * ((_sum_sq(a[:, 0], 1) if weight else 0.0) + (1.0 if bias else 0.0))
    total = _sum_sq(b.sum(dim=1), 1) if bias else 0.0
    if not weight:
        return total
    if layer.kind == "norm":
        return total + _sum_sq((a * b).sum(dim=1), 1)
    units, positions, width = a.shape
    outputs = b.shape[2]
    if positions * (width + outputs) < width * outputs or units * width * outputs > _MATERIALISE_LIMIT:
        return total + (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(b, b.transpose(1, 2))).sum(dim=(1, 2))
    return total + _sum_sq(torch.bmm(b.transpose(1, 2), a).flatten(1), 1)


def _clipped_sums(layer: _Activations, factors: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    module = layer.module
    if layer.kind == "opacus":
        return {p: torch.tensordot(factors, g, dims=1) for p, g in layer.sampled.items()}
    sums: dict[nn.Parameter, torch.Tensor] = {}
    if layer.kind == "conv":
        if module.weight.requires_grad:
            sums[module.weight] = torch.tensordot(factors, layer.a, dims=1)
        if module.bias is not None and module.bias.requires_grad:
            sums[module.bias] = factors @ layer.b
        return sums
    scaled = layer.b * factors[:, None, None]
    if module.bias is not None and module.bias.requires_grad:
        sums[module.bias] = scaled.sum(dim=(0, 1))
    if module.weight.requires_grad:
        a = layer.a
        if layer.kind == "norm":
            sums[module.weight] = (a * scaled).sum(dim=(0, 1))
        else:
            flat = scaled.reshape(-1, scaled.shape[-1]).T @ a.reshape(-1, a.shape[-1])
            sums[module.weight] = flat.reshape(module.weight.shape)
    return sums


class PrivateGradient:
    """Accumulates per-unit clipped gradient sums over physical batches, then noises them once."""

    def __init__(self, model: nn.Module, max_grad_norm: float):
        unsupported = unsupported_parameters(model)
        if unsupported:
            raise ValueError(f"privflow's DP step does not cover {unsupported}")
        self.model, self.max_grad_norm = model, max_grad_norm
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self._capture = _Capture(model)
        self._sums: dict[nn.Parameter, torch.Tensor] = {}

    def accumulate(self, features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
                   rows_per_unit: int = 1) -> None:
        """Add the clipped gradients of these units. Rows come unit by unit, `rows_per_unit`
        each; a padding row has weight 0 (and so contributes nothing). Nothing else is
        returned: the training rows' loss would be a statistic outside the guarantee."""
        rows = features.shape[0]
        if rows == 0:
            return
        units = rows // rows_per_unit
        with self._capture.recording():
            logits = self.model(features)
        losses = functional.cross_entropy(logits, labels, reduction="none")
        if weights is not None:
            losses = losses * weights
        calls = self._capture.calls
        outputs = [output for layer in self._capture.layers for _, output in calls.get(layer, [])]
        grads = iter(torch.autograd.grad(losses.sum(), outputs, allow_unused=True, materialize_grads=True))
        layers = [_layer_activations(layer, self._capture.kinds[layer], calls[layer],
                                     [next(grads) for _ in calls[layer]], units, self._capture.sampled_own.get(layer))
                  for layer in self._capture.layers if layer in calls]
        norms = torch.sqrt(sum(_squared_norms(layer) for layer in layers))
        factors = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        with torch.no_grad():
            for layer in layers:
                for parameter, total in _clipped_sums(layer, factors).items():
                    previous = self._sums.get(parameter)
                    self._sums[parameter] = total if previous is None else previous + total

    def release(self, noise: NoiseSource | None, noise_multiplier: float, expected_units: float,
                reduce=None) -> None:
        """Set each parameter's .grad to (clipped sum + N(0, (sigma C)^2)) / expected units.

        `reduce` (distributed runs) sums the partial sums of all processes; only the process
        given a noise source adds noise, so the total carries exactly one draw."""
        totals = [self._sums.pop(p) if p in self._sums else torch.zeros_like(p)  # empty batch: noise alone
                  for p in self.parameters]
        std = noise_multiplier * self.max_grad_norm
        if noise is not None and std > 0:  # one draw for all parameters: per-call overhead dominates small models
            flat = noise.gaussian((sum(t.numel() for t in totals),), std, totals[0])
            torch._foreach_add_(totals, [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in totals]), totals)])
        if reduce is not None:
            reduce(totals)
        torch._foreach_div_(totals, expected_units)
        for parameter, total in zip(self.parameters, totals):
            parameter.grad = total
