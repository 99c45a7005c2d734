"""DP-SGD: Poisson sampling of privacy units, per-unit clipping, Gaussian noise, accounting.

The step is privflow's own (privflow.privacy.dp_sgd: per-sample clipping without
per-sample gradients); Opacus provides the accountants. Sampling is Poisson over privacy
units: each unit joins a step with probability q, independently, and a unit with several
rows (user-level DP, bounded by privacy.max_rows_per_unit) is clipped as one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import TensorDataset

from privflow.errors import PrivacyError
from privflow.modeling.models import held_out_scores, initial_model
from privflow.privacy.accounting import DpSgdPlan, create_accountant, quiet_rdp_bound
from privflow.privacy.dp_sgd import PrivateGradient
from privflow.privacy.noise import NoiseSource, noise_source
from privflow.settings import TrainSettings
from privflow.training.checkpoint import capture_state, restore_state
from privflow.training.rates import rate_at, set_rate


@dataclass(frozen=True)
class UnitLayout:
    """Each privacy unit's rows, at most `rows_per_unit` of them (its first ones), as a
    (units, rows_per_unit) index table padded with -1."""

    rows: torch.Tensor
    dropped_rows: int

    @classmethod
    def of(cls, units: torch.Tensor, rows_per_unit: int) -> UnitLayout:
        if rows_per_unit == 1 and bool((units == torch.arange(len(units))).all()):
            return cls(torch.arange(len(units))[:, None], 0)
        order = torch.argsort(units, stable=True)
        ids, counts = torch.unique_consecutive(units[order], return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(units)) - torch.repeat_interleave(starts, counts)  # rank within its unit
        keep = slot < rows_per_unit
        table = torch.full((len(ids), rows_per_unit), -1, dtype=torch.long)
        table[torch.repeat_interleave(torch.arange(len(ids)), counts)[keep], slot[keep]] = order[keep]
        return cls(table, int((~keep).sum()))

    @property
    def units(self) -> int:
        return self.rows.shape[0]

    @property
    def rows_per_unit(self) -> int:
        return self.rows.shape[1]

    def batch(self, chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Row indices of the chosen units, unit by unit, and the weights that zero padding rows."""
        rows = self.rows[chosen].reshape(-1)
        if self.rows_per_unit == 1:
            return rows, None
        return rows.clamp(min=0), (rows >= 0).float()


def resolve_device(wanted: str) -> torch.device:
    if wanted == "cuda" and not torch.cuda.is_available():
        raise PrivacyError("train.device is cuda but no CUDA device is visible; use auto or cpu")
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(wanted)


@dataclass
class World:
    """This process's place in a DPDDP run (rank 0 of 1 when alone)."""

    rank: int = 0
    size: int = 1
    leader: int = 0  # the rank that holds the job: it alone adds noise and writes checkpoints

    def reduce(self, totals: list[torch.Tensor]) -> None:
        if self.size == 1:
            return
        flat = torch.cat([t.reshape(-1) for t in totals])
        torch.distributed.all_reduce(flat)
        for total, part in zip(totals, flat.split([t.numel() for t in totals])):
            total.copy_(part.view_as(total))


@dataclass
class TrainResult:
    model: nn.Module
    curve: list[dict]
    epsilon: float
    steps: int
    resumed_from_step: int = 0
    dropped_rows: int = 0
    history: list[list[float]] = field(default_factory=list)


def _randomness(t: TrainSettings, secure: bool, world: World, device: torch.device,
                precision: str) -> tuple[NoiseSource | None, NoiseSource]:
    """(noise, sampler): only the leader draws noise, so the reduced gradient carries one draw;
    every rank samples its own units independently."""
    seed = t.noise_seed
    noise = noise_source(secure, seed, device, precision) if world.rank == world.leader else None
    sampler = noise_source(secure, None if seed is None else seed + 1 + world.rank)
    return noise, sampler


def train_private(train: TensorDataset, test: TensorDataset, plan: DpSgdPlan, t: TrainSettings, n_classes: int,
                  start: dict | None = None, *, secure: bool = False, noise_precision: str = "parameters",
                  rows_per_unit: int = 1,
                  checkpoint=None, run_id: str = "", world: World = World(),
                  on_epoch: Callable[[dict], None] | None = None, model: nn.Module | None = None) -> TrainResult:
    """DP-SGD for plan.steps steps: Poisson sampling of units at plan.sample_rate, clipping per
    unit, Gaussian noise of std sigma*C, averaged over the expected batch (q x units).
    `model`: one the caller built (a pretrained encoder's top), trained as given; otherwise
    the preset's, from `start` or seeded random weights."""
    device = resolve_device(t.device)
    features, labels = train.tensors[0].to(device), train.tensors[1].to(device)
    units = train.tensors[2] if len(train.tensors) > 2 else torch.arange(len(labels))
    layout = UnitLayout.of(units, rows_per_unit)
    model = (model if model is not None else initial_model(t, features.shape[1], n_classes, start)).to(device)
    engine = PrivateGradient(model, t.max_grad_norm)
    optimizer = torch.optim.SGD(engine.parameters, lr=t.learning_rate, momentum=0.9)
    accountant = create_accountant(mechanism=plan.accountant)
    noise, sampler = _randomness(t, secure, world, device, noise_precision)
    mine = torch.arange(layout.units)[world.rank::world.size]  # DPDDP: each rank samples its own units
    expected = plan.sample_rate * layout.units
    steps_per_epoch = round(1 / plan.sample_rate)
    chunk = t.physical_batch_size or max(1, layout.units)
    curve, first = [], 0
    state = checkpoint.read() if checkpoint is not None else None
    if state is not None:  # the saved sampler state is the leader's: other ranks' seeded streams start again
        first, curve = restore_state(state, model, optimizer, accountant, noise,
                                     sampler if world.rank == world.leader else None)
    model.train()
    for step in range(first, plan.steps):
        chosen = mine[sampler.bernoulli(len(mine), plan.sample_rate)]
        for part in chosen.split(chunk):
            rows, weights = layout.batch(part)
            engine.accumulate(features[rows], labels[rows], None if weights is None else weights.to(device),
                              layout.rows_per_unit)
        engine.release(noise, plan.noise_multiplier, expected, world.reduce)
        set_rate(optimizer, rate_at(t.learning_rate, step, plan.steps, t.lr_schedule))
        optimizer.step()
        accountant.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)
        if (step + 1) % steps_per_epoch == 0 or step + 1 == plan.steps:
            # the held-out split's loss, never the training rows': an unnoised mean over every
            # sampled training row would be published (curve, report) outside the guarantee
            curve.append({"epoch": len(curve) + 1, "epsilon": _spent(accountant, plan),
                          **held_out_scores(model, *test.tensors[:2])})  # to its device by batch
            model.train()
            if on_epoch is not None:
                on_epoch({"epoch": len(curve), "epochs": -(-plan.steps // steps_per_epoch),
                          "epsilon": curve[-1]["epsilon"]})
            if checkpoint is not None and world.rank == world.leader and len(curve) % t.checkpoint_every_epochs == 0 \
                    and step + 1 < plan.steps:
                checkpoint.write(capture_state(run_id, plan, step + 1, accountant, curve, model, optimizer, noise, sampler))
    return TrainResult(model.cpu().eval(), curve, _spent(accountant, plan), sum(n for *_, n in accountant.history),
                       first, layout.dropped_rows, [list(h) for h in accountant.history])


def _spent(accountant, plan: DpSgdPlan) -> float:
    # Only a deliberately broken trainer (the audit's negative control) runs without noise;
    # its privacy loss is unbounded, which the accountant cannot represent.
    if plan.noise_multiplier <= 0:
        return float("inf")
    with quiet_rdp_bound():
        return float(accountant.get_epsilon(delta=plan.delta))
