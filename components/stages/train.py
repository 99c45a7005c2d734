"""Stage `train`: DP-SGD to a target (epsilon, delta), under the dataset's budget.

Order matters: plan the run from counts alone, charge the ledger (refusing if the cap
would be exceeded), and only then decrypt a single row. The charge is written ahead of
training for the full plan, so a killed run is never charged less than the steps it took;
a killed run resumes from its last sealed checkpoint under the same charge.

The step is privflow's own (components/privacy/dp_sgd.py: per-sample clipping without
per-sample gradients); Opacus provides the accountants, DPLSTM and the model validator.
Sampling is Poisson over privacy units: each unit joins a step with probability q,
independently, and a unit with several rows (user-level DP, bounded by
privacy.max_rows_per_unit) is clipped as one.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from opacus.accountants import create_accountant
from safetensors.numpy import load as load_tensors
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privflow.artifacts import git_commit, open_vault, read_json, stage_paths, write_json
from privflow.stages.encrypt import DATASET, split_identity
from privflow.errors import PrivacyError, run_stage
from privflow.modeling.models import accuracy, build_model, load_weights, weights_of
from privflow.preflight import check_model_config
from privflow.privacy.accounting import DpSgdPlan, plan_dp_sgd
from privflow.privacy.audit import Canaries, audit, draw_canaries
from privflow.privacy.dp_sgd import PrivateGradient
from privflow.budget import (budget_name, budgets_in_ledger, find_anchors, open_ledger, refuse_unless_intact,
                               with_project_anchors, write_anchor)
from privflow.privacy.ledger import Charge
from privflow.privacy.noise import NoiseSource, noise_source
from privflow.settings import Settings, TrainSettings, load_settings
from privflow.crypto.vault import Vault

MODEL = "model.safetensors"
MODEL_CARD = "model.json"
PRETRAINED = "pretrained.safetensors"  # written by privflow.stages.pretrain (not imported: it imports us)
PRETRAIN_DESCRIPTION = "pretrain.json"
BASELINE_LEARNING_RATE = 1e-2
ENGINE = ("privflow DP step: per-layer norms from activations and output gradients (outer-product "
          "identity, Gram form or grouped convolution, whichever is cheaper), one clipped matmul per layer")


def privacy_unit_bound(description: dict, settings: Settings) -> int:
    """Rows per privacy unit that training keeps: 1 for example-level data, else the declared
    bound; several rows per person without a bound are refused."""
    most = description["max_rows_per_unit"]
    if most <= 1:
        return 1
    bound = settings.privacy.max_rows_per_unit
    if bound is None:
        raise PrivacyError(
            f"some {description['privacy_unit']} has {most} rows: example-level DP would understate "
            f"that person's epsilon. Set privacy.max_rows_per_unit (e.g. {min(most, 10)}) to train with "
            "user-level DP (each person's first rows kept, clipped and accounted as one), or declare "
            "the unit column unique in the schema")
    return bound


def plan_and_charge(description: dict, settings: Settings, run_id: str, extra_rows: int = 0, *, vault: Vault,
                    data_dir: Path, metrics: Path | None = None) -> tuple[DpSgdPlan, dict]:
    """Refuse or charge before training reads a row; returns the plan and the budget after it.

    In this order, each a refusal that charges nothing: the plan from counts alone; the
    ledger verified against its anchors; the budget (cap, and the snapshot's own budget);
    the inputs' identity and authentication tags (plaintext dropped as it is checked).
    Only then the charge, and the ledger's new head as an anchor."""
    bound = privacy_unit_bound(description, settings)
    train_split = description["splits"]["train"]
    units = (train_split.get("units", train_split["rows"]) if bound > 1 else train_split["rows"]) + extra_rows
    t = settings.train
    plan = plan_dp_sgd(rows=units, batch_size=t.batch_size, epochs=t.epochs, target_epsilon=t.target_epsilon,
                       target_delta=t.target_delta, accountant=t.accountant)
    charge = Charge(run_id=run_id, dataset=budget_name(settings),
                    privacy_unit=description["privacy_unit"], snapshot_id=description["snapshot_id"],
                    stage="train", mechanism="DP-SGD (Poisson-sampled Gaussian)",
                    accountant=plan.accountant, noise_multiplier=plan.noise_multiplier,
                    sample_rate=plan.sample_rate, steps=plan.steps, delta=plan.delta,
                    epsilon=plan.epsilon, code_commit=git_commit(),
                    created_at=datetime.now(UTC).isoformat(timespec="seconds"))
    ledger = open_ledger(settings, vault)
    anchors = with_project_anchors(vault, find_anchors(vault, charge.dataset, metrics=metrics)[0],
                                   budgets_in_ledger(settings))
    refuse_unless_intact(ledger, anchors, f"dataset {description['dataset']}")
    ledger.check(charge, settings.privacy.epsilon_cap)
    authenticate_splits(vault, description, data_dir)
    budget = ledger.charge(charge, settings.privacy.epsilon_cap)
    write_anchor(vault, ledger.anchor(run_id))
    return plan, _budget_dict(budget, plan)


def authenticate_splits(vault: Vault, description: dict, folder: Path) -> None:
    """Both splits are what encrypt sealed for this snapshot (identity and every tag)."""
    for split in ("train", "test"):
        vault.authenticate(folder / f"{split}.sealed",
                           split_identity(description["dataset"], description["snapshot_id"], split))


def _budget_dict(budget, plan: DpSgdPlan) -> dict:
    return {"cap": budget.cap, "spent_total": budget.spent, "spent_sum": budget.spent_sum,
            "delta_total": budget.delta_total, "this_run": plan.epsilon}


def load_split(vault: Vault, description: dict, split: str, folder: Path) -> TensorDataset:
    """(features, labels, unit index) of one sealed split."""
    identity = split_identity(description["dataset"], description["snapshot_id"], split)
    tensors = load_tensors(vault.open(folder / f"{split}.sealed", identity))
    labels = torch.from_numpy(tensors["labels"])
    units = torch.from_numpy(tensors["units"]) if "units" in tensors else torch.arange(len(labels))
    return TensorDataset(torch.from_numpy(tensors["features"]), labels, units)


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


def initial_model(t: TrainSettings, n_features: int, n_classes: int, start: dict | None = None) -> nn.Module:
    """Seeded random weights, or the public pretraining's; `last_layer` freezes all but the output."""
    torch.manual_seed(t.init_seed)  # seeds the initial weights only
    model = build_model(t.model, n_features, n_classes, t.hidden_units, t.input_shape)
    if start is not None:
        load_weights(model, start["weights"])
        if start["fine_tune"] == "last_layer":
            last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
            for parameter in model.parameters():
                parameter.requires_grad = False
            for parameter in last.parameters():
                parameter.requires_grad = True
    return model


def read_pretrained(folder: Path) -> tuple[dict, dict | None]:
    """The pretrain stage's description, and its weights when public data was declared."""
    description = read_json(folder / PRETRAIN_DESCRIPTION)
    if not description["pretrained"]:
        return description, None
    return description, {"weights": load_file(folder / PRETRAINED), "fine_tune": description["fine_tune"]}


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


def _randomness(t: TrainSettings, secure: bool, world: World, device: torch.device) -> tuple[NoiseSource | None, NoiseSource]:
    """(noise, sampler): only rank 0 draws noise, so the reduced gradient carries one draw;
    every rank samples its own units independently."""
    seed = t.noise_seed
    noise = noise_source(secure, seed, device) if world.rank == 0 else None
    sampler = noise_source(secure, None if seed is None else seed + 1 + world.rank)
    return noise, sampler


def train_private(train: TensorDataset, test: TensorDataset, plan: DpSgdPlan, t: TrainSettings, n_classes: int,
                  start: dict | None = None, *, secure: bool = False, rows_per_unit: int = 1,
                  checkpoint=None, run_id: str = "", world: World = World()) -> TrainResult:
    """DP-SGD for plan.steps steps: Poisson sampling of units at plan.sample_rate, clipping per
    unit, Gaussian noise of std sigma*C, averaged over the expected batch (q x units)."""
    device = resolve_device(t.device)
    features, labels = train.tensors[0].to(device), train.tensors[1].to(device)
    units = train.tensors[2] if len(train.tensors) > 2 else torch.arange(len(labels))
    layout = UnitLayout.of(units, rows_per_unit)
    model = initial_model(t, features.shape[1], n_classes, start).to(device)
    engine = PrivateGradient(model, t.max_grad_norm)
    optimizer = torch.optim.SGD(engine.parameters, lr=t.learning_rate, momentum=0.9)
    accountant = create_accountant(mechanism=plan.accountant)
    noise, sampler = _randomness(t, secure, world, device)
    mine = torch.arange(layout.units)[world.rank::world.size]  # DPDDP: each rank samples its own units
    expected = plan.sample_rate * layout.units
    steps_per_epoch = round(1 / plan.sample_rate)
    chunk = t.physical_batch_size or max(1, layout.units)
    curve, first = [], 0
    state = checkpoint.read() if checkpoint is not None else None
    if state is not None:
        first, curve = _restore(state, model, optimizer, accountant, noise, sampler)
    model.train()
    epoch_loss, epoch_units = 0.0, 0
    for step in range(first, plan.steps):
        chosen = mine[sampler.bernoulli(len(mine), plan.sample_rate)]
        for part in chosen.split(chunk):
            rows, weights = layout.batch(part)
            result = engine.accumulate(features[rows], labels[rows],
                                       None if weights is None else weights.to(device), layout.rows_per_unit)
            epoch_loss, epoch_units = epoch_loss + result.loss_sum, epoch_units + result.units
        engine.release(noise, plan.noise_multiplier, expected, world.reduce)
        optimizer.step()
        accountant.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)
        if (step + 1) % steps_per_epoch == 0 or step + 1 == plan.steps:
            curve.append({"epoch": len(curve) + 1, "epsilon": _spent(accountant, plan),
                          "train_loss": float(epoch_loss) / max(epoch_units, 1),
                          "test_accuracy": accuracy(model, test.tensors[0].to(device), test.tensors[1].to(device))})
            model.train()
            epoch_loss, epoch_units = 0.0, 0
            if checkpoint is not None and world.rank == 0 and len(curve) % t.checkpoint_every_epochs == 0 \
                    and step + 1 < plan.steps:
                checkpoint.write(_state(run_id, plan, step + 1, accountant, curve, model, optimizer, noise, sampler))
    return TrainResult(model.cpu().eval(), curve, _spent(accountant, plan), sum(n for *_, n in accountant.history),
                       first, layout.dropped_rows, [list(h) for h in accountant.history])


def _spent(accountant, plan: DpSgdPlan) -> float:
    # Only a deliberately broken trainer (the audit's negative control) runs without noise;
    # its privacy loss is unbounded, which the accountant cannot represent.
    return float(accountant.get_epsilon(delta=plan.delta)) if plan.noise_multiplier > 0 else float("inf")


def _state(run_id: str, plan: DpSgdPlan, step: int, accountant, curve: list[dict], model: nn.Module,
           optimizer: torch.optim.Optimizer, noise: NoiseSource | None, sampler: NoiseSource):
    from privflow.training.checkpoint import CheckpointState

    momentum = {str(i): optimizer.state[p]["momentum_buffer"] for i, p in enumerate(optimizer.param_groups[0]["params"])
                if "momentum_buffer" in optimizer.state[p]}
    generators = {f"{name}.{k}": v for name, source in (("noise", noise), ("sampler", sampler))
                  if source is not None for k, v in source.state().items()}
    return CheckpointState(run_id, asdict(plan), step, [list(h) for h in accountant.history], curve,
                           weights_of(model), momentum, generators)


def _restore(state, model: nn.Module, optimizer: torch.optim.Optimizer, accountant,
             noise: NoiseSource | None, sampler: NoiseSource) -> tuple[int, list[dict]]:
    device = next(model.parameters()).device
    load_weights(model, state.model)
    parameters = optimizer.param_groups[0]["params"]
    for index, buffer in state.optimizer.items():
        optimizer.state[parameters[int(index)]]["momentum_buffer"] = buffer.to(device)
    accountant.history = [tuple(h) for h in state.history]
    for name, source in (("noise", noise), ("sampler", sampler)):
        if source is not None and hasattr(source, "restore"):
            source.restore({k.split(".", 1)[1]: v for k, v in state.generators.items() if k.startswith(name + ".")})
    return state.step, list(state.curve)


def train_baseline(train: TensorDataset, test: TensorDataset, t: TrainSettings, n_classes: int) -> float:
    """Non-private reference on the same split: its accuracy is reported, its weights discarded.

    Same model, batch size and epochs, no noise. Two standard recipes are tried, the DP run's
    own (SGD at its learning rate, the batch gradient clipped to C) and Adam at 1e-2, and the
    one better on a tenth of the training split held back is scored: either alone is poor on
    some presets (an LSTM needs Adam's steps, a small CNN diverges under Adam's early ones),
    and a weak baseline would flatter the DP model."""
    features, labels = train.tensors[:2]
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(t.init_seed))
    held, fit = order[: max(1, len(labels) // 10)], order[max(1, len(labels) // 10):]
    best_score, best_model = -1.0, None
    for recipe in ("dp_recipe_without_noise", "adam"):
        torch.manual_seed(t.init_seed)
        model = build_model(t.model, features.shape[1], n_classes, t.hidden_units, t.input_shape)
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


def with_canaries(train: TensorDataset, canaries: Canaries) -> TensorDataset:
    """The audit's canaries join the training rows, each its own privacy unit."""
    features, labels, units = train.tensors
    added = int(canaries.included.sum())
    return TensorDataset(torch.cat([features, torch.from_numpy(canaries.features[canaries.included])]),
                         torch.cat([labels, torch.from_numpy(canaries.labels[canaries.included])]),
                         torch.cat([units, (int(units.max()) + 1 if len(units) else 0) + torch.arange(added)]))


def save_model(model: nn.Module, out: Path, card: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights_of(model), out / MODEL)
    write_json(out / MODEL_CARD, card)


def audit_gate(model: nn.Module, canaries: Canaries | None, claimed: float, confidence: float) -> dict | None:
    """The empirical audit, when canaries were drawn; refuses a model that leaks more than claimed."""
    if canaries is None:
        return None
    result = audit(model, canaries, claimed, confidence)
    if not result.passed:
        raise PrivacyError(
            f"empirical audit failed: {result.correct} of {result.guesses} membership guesses on "
            f"{result.canaries} canaries give epsilon >= {result.epsilon_lower_bound:.3f} at "
            f"{result.confidence:.0%} confidence, above the accounted {claimed:.3f}: an accounting or "
            "sampling bug; the model is not released")
    return result.as_dict()


def resume_or_charge(description: dict, settings: Settings, checkpoint, extra_rows: int, *, vault: Vault,
                     data_dir: Path, metrics: Path | None = None):
    """A checkpoint of this configuration whose charge is in the ledger: continue that run
    under its charge. Otherwise a new run, charged (or refused) before any decryption."""
    state = checkpoint.read() if checkpoint is not None and checkpoint.path.exists() else None
    ledger, budget_id = open_ledger(settings, vault), budget_name(settings)
    if state is not None and any(c.run_id == state.run_id for c in ledger.charges(budget_id)):
        plan = DpSgdPlan(**state.plan)
        budget = ledger.budget(budget_id, settings.privacy.epsilon_cap)
        return state.run_id, plan, _budget_dict(budget, plan)
    if checkpoint is not None:
        checkpoint.discard()
    run_id = uuid.uuid4().hex
    plan, budget = plan_and_charge(description, settings, run_id, extra_rows, vault=vault, data_dir=data_dir,
                                   metrics=metrics)
    return run_id, plan, budget


def run_training(settings: Settings, description: dict, data_dir: Path, pretrained_dir: Path,
                 canaries: Canaries | None, plan: DpSgdPlan, run_id: str,
                 checkpoint) -> tuple[TrainResult, TensorDataset, TensorDataset]:
    """Decrypt the splits and train, in this process or in torchrun's (DPDDP)."""
    t = settings.train
    vault = open_vault()
    real, test = (load_split(vault, description, split, data_dir) for split in ("train", "test"))
    if t.processes > 1:
        from privflow.training.distributed import train_distributed

        if canaries is not None:
            raise PrivacyError("train.audit_canaries needs train.processes: 1 (the canaries live in one process)")
        return train_distributed(settings, description, data_dir, pretrained_dir, plan, run_id), real, test
    train = with_canaries(real, canaries) if canaries else real
    result = train_private(train, test, plan, t, len(description["classes"]), read_pretrained(pretrained_dir)[1],
                           secure=settings.privacy.secure_noise, rows_per_unit=privacy_unit_bound(description, settings),
                           checkpoint=checkpoint, run_id=run_id)
    return result, real, test


def main() -> None:
    args = stage_paths(__doc__, "data", "pretrained", "out", "metrics", "curve")
    settings = load_settings(args.dataset)
    t = settings.train
    description = read_json(args.data / DATASET)
    n_classes = len(description["classes"])
    canaries = (draw_canaries(t.audit_canaries, len(description["features"]), n_classes, np.random.default_rng())
                if t.audit_canaries else None)
    extra_rows = int(canaries.included.sum()) if canaries else 0
    pretraining, _ = read_pretrained(args.pretrained)
    bound = privacy_unit_bound(description, settings)
    # canaries are drawn afresh per run, so an audited run cannot resume
    checkpoint = None if canaries else _checkpoint(settings, description, pretraining, bound)
    check_model_config(t, len(description["features"]), n_classes, f"dataset {description['dataset']}")
    vault = open_vault()
    run_id, plan, budget = resume_or_charge(description, settings, checkpoint, extra_rows, vault=vault,
                                            data_dir=args.data, metrics=args.metrics)
    try:
        train_charged(args, settings, vault, description, canaries, plan, run_id, budget, checkpoint)
    except Exception as error:
        error.add_note(f"run {run_id[:12]}'s charge of epsilon {plan.epsilon:.3f} stands: the private data was "
                       "decrypted before this failure")
        raise


def train_charged(args, settings: Settings, vault: Vault, description: dict, canaries: Canaries | None, plan: DpSgdPlan,
                  run_id: str, budget: dict, checkpoint) -> None:
    """Everything after the charge: decrypt, train, gate, write the model and its metrics."""
    t, bound = settings.train, privacy_unit_bound(description, settings)
    n_classes, extra_rows = len(description["classes"]), int(canaries.included.sum()) if canaries else 0
    pretraining, _ = read_pretrained(args.pretrained)
    result, real, test = run_training(settings, description, args.data, args.pretrained, canaries, plan, run_id,
                                      checkpoint)
    anchor = open_ledger(settings, vault).anchor(run_id)
    if result.steps != plan.steps:
        raise PrivacyError(f"training took {result.steps} steps, the charge covers {plan.steps}")
    audited = audit_gate(result.model, canaries, result.epsilon, t.audit_confidence)
    save_model(result.model, args.out, {
        "run_id": run_id, "preset": t.model, "hidden_units": t.hidden_units,
        "input_shape": list(t.input_shape) if t.input_shape else None, "features": description["features"],
        "classes": description["classes"], "snapshot_id": description["snapshot_id"], "dataset": description["dataset"]})
    write_anchor(vault, anchor, args.out)
    noise = noise_source(settings.privacy.secure_noise, t.noise_seed)
    write_json(args.metrics, {
        "run_id": run_id, "snapshot_id": description["snapshot_id"], "audit": audited,
        "privacy": {**asdict(plan), "epsilon_spent": result.epsilon, "max_grad_norm": t.max_grad_norm,
                    "privacy_unit": description["privacy_unit"], "rows_per_unit_bound": bound,
                    "unit_level": "user" if bound > 1 else "example", "poisson_sampling": True,
                    "secure_noise": settings.privacy.secure_noise, "noise_source": noise.description,
                    "profile": settings.privacy.profile, "accountant_history": result.history,
                    "grad_sample_mode": ENGINE},
        "training": {"model": t.model, "device": str(resolve_device(t.device)), "processes": t.processes,
                     "resumed_from_step": result.resumed_from_step},
        "budget": {**budget, "name": budget_name(settings)},
        "ledger_anchor": asdict(anchor),
        "rows": {"train": len(real), "test": len(test), "canaries": extra_rows,
                 "dropped_by_unit_bound": result.dropped_rows},
        "pretraining": pretraining,
        "accuracy": {"private": result.curve[-1]["test_accuracy"],
                     "non_private_baseline": train_baseline(real, test, t, n_classes)},
    })
    write_json(args.curve, result.curve)
    if checkpoint is not None:
        checkpoint.discard()
    print(f"train: epsilon {result.epsilon:.3f} (delta {plan.delta:g}, noise {plan.noise_multiplier:.3f}, "
          f"q {plan.sample_rate:.4f}, {plan.steps} steps{', resumed at step %d' % result.resumed_from_step if result.resumed_from_step else ''}), "
          f"test accuracy {result.curve[-1]['test_accuracy']:.3f}, budget {budget['spent_total']:.3f}/{budget['cap']:g}")


def _checkpoint(settings: Settings, description: dict, pretraining: dict, bound: int):
    from privflow.training.checkpoint import Checkpoint, fingerprint

    key = fingerprint(description["snapshot_id"], settings.train.model_dump(mode="json"), bound,
                      settings.privacy.secure_noise, pretraining)
    return Checkpoint(open_vault, description["dataset"], description["snapshot_id"], key)


if __name__ == "__main__":
    run_stage(main)
