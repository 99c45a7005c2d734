"""Stage `train`: DP-SGD with Opacus to a target (epsilon, delta), under the dataset's budget.

Order matters: plan the run from counts alone, charge the ledger (refusing if the cap
would be exceeded), and only then decrypt a single row. The charge is written ahead of
training for the full plan, so a killed run is never charged less than the steps it took.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from opacus import PrivacyEngine
from safetensors.numpy import load as load_tensors
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from components.artifacts import git_commit, open_vault, read_json, stage_paths, write_json
from components.encrypt import DATASET, split_identity
from components.errors import PrivacyError, run_stage
from components.models import accuracy, build_model
from components.privacy.accounting import DpSgdPlan, plan_dp_sgd
from components.privacy.audit import Canaries, audit, draw_canaries
from components.privacy.ledger import Charge, PrivacyLedger
from components.settings import Settings, TrainSettings, ledger_location, load_settings
from components.vault import Vault

MODEL = "model.safetensors"
MODEL_CARD = "model.json"
PRETRAINED = "pretrained.safetensors"  # written by components.pretrain (not imported: it imports us)
PRETRAIN_DESCRIPTION = "pretrain.json"


def plan_and_charge(description: dict, settings: Settings, run_id: str,
                    extra_rows: int = 0) -> tuple[DpSgdPlan, dict]:
    """Refuse or charge before any decryption; returns the plan and the budget after it."""
    if description["max_rows_per_unit"] > 1:
        raise PrivacyError(
            f"some {description['privacy_unit']} has {description['max_rows_per_unit']} rows: "
            "example-level DP would understate that person's epsilon; declare the unit column "
            "unique in the schema or deduplicate per person"
        )
    t = settings.train
    plan = plan_dp_sgd(rows=description["splits"]["train"]["rows"] + extra_rows, batch_size=t.batch_size,
                       epochs=t.epochs, target_epsilon=t.target_epsilon,
                       target_delta=t.target_delta, accountant=t.accountant)
    charge = Charge(run_id=run_id, dataset=description["dataset"],
                    privacy_unit=description["privacy_unit"], snapshot_id=description["snapshot_id"],
                    stage="train", mechanism="DP-SGD (Poisson-sampled Gaussian)",
                    accountant=plan.accountant, noise_multiplier=plan.noise_multiplier,
                    sample_rate=plan.sample_rate, steps=plan.steps, delta=plan.delta,
                    epsilon=plan.epsilon, code_commit=git_commit(),
                    created_at=datetime.now(UTC).isoformat(timespec="seconds"))
    budget = PrivacyLedger(ledger_location(settings)).charge(charge, settings.privacy.epsilon_cap)
    return plan, {"cap": budget.cap, "spent_total": budget.spent, "spent_sum": budget.spent_sum,
                  "delta_total": budget.delta_total, "this_run": plan.epsilon}


def load_split(vault: Vault, description: dict, split: str, folder: Path) -> TensorDataset:
    identity = split_identity(description["dataset"], description["snapshot_id"], split)
    tensors = load_tensors(vault.open(folder / f"{split}.sealed", identity))
    return TensorDataset(torch.from_numpy(tensors["features"]), torch.from_numpy(tensors["labels"]))


def run_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer) -> float:
    """One pass; returns the mean training loss over non-empty batches."""
    # No skipping of empty Poisson batches: every step must reach optimizer.step(), where
    # Opacus adds noise and the accountant counts it, or the charge and the run disagree.
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


def initial_model(t: TrainSettings, n_features: int, n_classes: int, start: dict | None = None) -> nn.Module:
    """Seeded random weights, or the public pretraining's; `last_layer` freezes all but the output."""
    torch.manual_seed(t.init_seed)  # seeds the initial weights only
    model = build_model(t.model, n_features, n_classes, t.hidden_units)
    if start is not None:
        model.load_state_dict(start["weights"])
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


def train_private(train: TensorDataset, test: TensorDataset, plan: DpSgdPlan, t: TrainSettings,
                  n_classes: int, start: dict | None = None) -> tuple[nn.Module, list[dict], float]:
    model = initial_model(t, train.tensors[0].shape[1], n_classes, start)
    torch.seed()  # fresh OS entropy from here on: the DP noise and sampling are never seeded
    engine = PrivacyEngine(accountant=plan.accountant)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=t.learning_rate, momentum=0.9)
    loader = DataLoader(train, batch_size=t.batch_size)
    model, optimizer, loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=plan.noise_multiplier,
        max_grad_norm=t.max_grad_norm, poisson_sampling=True, grad_sample_mode=t.grad_sample_mode)
    if abs(loader.sample_rate - plan.sample_rate) > 1e-12:
        raise PrivacyError(f"Opacus sampled at {loader.sample_rate}, the charge assumed {plan.sample_rate}")
    curve: list[dict] = []
    for epoch in range(1, t.epochs + 1):
        loss = run_epoch(model, loader, optimizer)
        curve.append({"epoch": epoch, "epsilon": _spent(engine, plan), "train_loss": loss,
                      "test_accuracy": accuracy(model, *test.tensors)})
    return model._module, curve, _spent(engine, plan)


def _spent(engine: PrivacyEngine, plan: DpSgdPlan) -> float:
    # Only a deliberately broken trainer (the audit's negative control) runs without noise;
    # its privacy loss is unbounded, which the accountant cannot represent.
    return engine.get_epsilon(plan.delta) if plan.noise_multiplier > 0 else float("inf")


def train_baseline(train: TensorDataset, test: TensorDataset, t: TrainSettings, n_classes: int) -> float:
    """Non-private reference on the same split: its accuracy is reported, its weights discarded."""
    torch.manual_seed(t.init_seed)
    model = build_model(t.model, train.tensors[0].shape[1], n_classes, t.hidden_units)
    optimizer = torch.optim.SGD(model.parameters(), lr=t.learning_rate, momentum=0.9)
    loader = DataLoader(train, batch_size=t.batch_size, shuffle=True)
    for _ in range(t.epochs):
        run_epoch(model, loader, optimizer)
    return accuracy(model, *test.tensors)


def with_canaries(train: TensorDataset, canaries: Canaries) -> TensorDataset:
    features, labels = train.tensors
    return TensorDataset(torch.cat([features, torch.from_numpy(canaries.features[canaries.included])]),
                         torch.cat([labels, torch.from_numpy(canaries.labels[canaries.included])]))


def save_model(model: nn.Module, out: Path, card: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, out / MODEL)
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


def main() -> None:
    args = stage_paths(__doc__, "data", "pretrained", "out", "metrics", "curve")
    settings = load_settings(args.dataset)
    t = settings.train
    description = read_json(args.data / DATASET)
    n_classes, run_id = len(description["classes"]), uuid.uuid4().hex
    canaries = (draw_canaries(t.audit_canaries, len(description["features"]), n_classes, np.random.default_rng())
                if t.audit_canaries else None)
    extra_rows = int(canaries.included.sum()) if canaries else 0
    plan, budget = plan_and_charge(description, settings, run_id, extra_rows)
    pretraining, start = read_pretrained(args.pretrained)
    vault = open_vault()
    real, test = (load_split(vault, description, split, args.data) for split in ("train", "test"))
    train = with_canaries(real, canaries) if canaries else real
    model, curve, epsilon = train_private(train, test, plan, t, n_classes, start)
    audited = audit_gate(model, canaries, epsilon, t.audit_confidence)
    save_model(model, args.out, {
        "run_id": run_id, "preset": t.model, "hidden_units": t.hidden_units, "features": description["features"],
        "classes": description["classes"], "snapshot_id": description["snapshot_id"], "dataset": description["dataset"]})
    write_json(args.metrics, {
        "run_id": run_id, "snapshot_id": description["snapshot_id"], "audit": audited,
        "privacy": {**asdict(plan), "epsilon_spent": epsilon, "max_grad_norm": t.max_grad_norm,
                    "privacy_unit": description["privacy_unit"], "poisson_sampling": True,
                    "secure_noise": False, "grad_sample_mode": t.grad_sample_mode},
        "budget": budget, "rows": {"train": len(real), "test": len(test), "canaries": extra_rows},
        "pretraining": pretraining,
        "accuracy": {"private": curve[-1]["test_accuracy"],
                     "non_private_baseline": train_baseline(real, test, t, n_classes)},
    })
    write_json(args.curve, curve)
    print(f"train: epsilon {epsilon:.3f} (delta {plan.delta:g}, noise {plan.noise_multiplier:.3f}, "
          f"q {plan.sample_rate:.4f}, {plan.steps} steps), test accuracy {curve[-1]['test_accuracy']:.3f}, "
          f"budget {budget['spent_total']:.3f}/{budget['cap']:g}")


if __name__ == "__main__":
    run_stage(main)
