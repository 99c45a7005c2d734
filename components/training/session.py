"""A charged run: decrypt, train (here or over torchrun's processes), gate, write the model and its metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from privflow.artifacts import open_vault, write_json
from privflow.budget import budget_name, open_ledger, write_anchor
from privflow.crypto.vault import Vault
from privflow.errors import PrivacyError
from privflow.modeling.models import build_model
from privflow.privacy.accounting import DpSgdPlan
from privflow.privacy.audit import Canaries
from privflow.privacy.dp_sgd import engines
from privflow.privacy.noise import noise_source
from privflow.progress import report_progress
from privflow.settings import Settings
from privflow.training.baseline import Baseline, preset_baseline, privacy_cost
from privflow.training.baseline_memo import entry_name, remembered_baseline
from privflow.training.canaries import audit_gate, with_canaries
from privflow.training.charge import privacy_unit_bound
from privflow.training.io import load_split, read_pretrained, save_model
from privflow.training.loop import TrainResult, resolve_device, train_private
from privflow.training.text_finetune import load_text_training

ENGINE = ("privflow DP step: per-layer norms from activations and output gradients (outer-product "
          "identity, Gram form or grouped convolution, whichever is cheaper), one clipped matmul per layer")


@dataclass
class Trained:
    """A finished run: the loop's result, the splits it trained and was scored on (the canaries
    not counted), the non-private baseline (run last, when asked), what the model card adds for
    this preset, and the audit's canaries as the model reads them."""

    result: TrainResult
    train: TensorDataset
    test: TensorDataset
    baseline: Callable[[], Baseline]
    card: dict
    canaries: Canaries | None = None


def run_training(settings: Settings, description: dict, data_dir: Path, pretrained_dir: Path,
                 canaries: Canaries | None, plan: DpSgdPlan, run_id: str, checkpoint) -> Trained:
    """Decrypt the splits and train, in this process or in torchrun's (DPDDP)."""
    t = settings.train
    n_classes = len(description["classes"])
    vault = open_vault()
    options = {"secure": settings.privacy.secure_noise, "noise_precision": settings.privacy.secure_noise_precision,
               "rows_per_unit": privacy_unit_bound(description, settings),
               "checkpoint": checkpoint, "run_id": run_id,
               "on_epoch": lambda done: report_progress(f"train@{settings.dataset.name}", **done)}
    if t.model == "text":
        text = load_text_training(t, vault, description, data_dir, canaries)
        train = with_canaries(text.train, text.canaries) if text.canaries else text.train
        result = (_train_distributed(settings, description, data_dir, pretrained_dir, plan, run_id, text.top)
                  if t.distributed else train_private(train, text.test, plan, t, n_classes, model=text.top, **options))
        return Trained(result, text.train, text.test, lambda: text.baseline(t), {"text": text.card}, text.canaries)
    real, test = (load_split(vault, description, split, data_dir) for split in ("train", "test"))
    start = read_pretrained(pretrained_dir)[1]
    baseline = lambda: preset_baseline(real, test, t, n_classes, start)  # noqa: E731
    if t.distributed:  # no canaries here: settings refuse them with train.processes > 1
        model = build_model(t.model, len(description["features"]), n_classes, t.hidden_units, t.input_shape)
        result = _train_distributed(settings, description, data_dir, pretrained_dir, plan, run_id, model)
        return Trained(result, real, test, baseline, {})
    train = with_canaries(real, canaries) if canaries else real
    result = train_private(train, test, plan, t, n_classes, start, **options)
    return Trained(result, real, test, baseline, {}, canaries)


def _train_distributed(*args) -> TrainResult:
    from privflow.training.distributed import train_distributed  # torchrun's machinery only when used

    return train_distributed(*args)


def train_charged(args, settings: Settings, vault: Vault, description: dict, canaries: Canaries | None, plan: DpSgdPlan,
                  run_id: str, budget: dict, checkpoint) -> None:
    """Everything after the charge: decrypt, train, gate, write the model and its metrics."""
    t, bound = settings.train, privacy_unit_bound(description, settings)
    extra_rows = int(canaries.included.sum()) if canaries else 0
    pretraining, start = read_pretrained(args.pretrained)
    trained = run_training(settings, description, args.data, args.pretrained, canaries, plan, run_id, checkpoint)
    result, real, test = trained.result, trained.train, trained.test
    name = entry_name(vault, settings.dataset.name, t, start, trained.card, real.tensors[:2], test.tensors[:2])
    baseline = remembered_baseline(vault, settings.dataset.name, name, trained.baseline, test.tensors[:2])
    anchor = open_ledger(settings, vault).anchor(run_id)
    if result.steps != plan.steps:
        raise PrivacyError(f"training took {result.steps} steps, the charge covers {plan.steps}")
    audited = audit_gate(result.model, trained.canaries, (result.epsilon, plan.delta), t.audit_confidence)
    save_model(result.model, args.out, {
        "run_id": run_id, "preset": t.model, "hidden_units": t.hidden_units,
        "input_shape": list(t.input_shape) if t.input_shape else None, "features": description["features"],
        "classes": description["classes"], "snapshot_id": description["snapshot_id"], "dataset": description["dataset"],
        **trained.card})
    write_anchor(vault, anchor, args.out)
    noise = noise_source(settings.privacy.secure_noise, t.noise_seed, precision=settings.privacy.secure_noise_precision)
    write_json(args.metrics, {
        "run_id": run_id, "snapshot_id": description["snapshot_id"], "audit": audited,
        "privacy": {**asdict(plan), "epsilon_spent": result.epsilon, "max_grad_norm": t.max_grad_norm,
                    "privacy_unit": description["privacy_unit"], "rows_per_unit_bound": bound,
                    "unit_level": "user" if bound > 1 else "example", "poisson_sampling": True,
                    "secure_noise": settings.privacy.secure_noise, "noise_source": noise.description,
                    "profile": settings.privacy.profile, "accountant_history": result.history,
                    "grad_sample_mode": ENGINE, "engines": engines(result.model)},
        "training": {"model": t.model, "device": str(resolve_device(t.device)), "processes": t.processes, "nodes": t.nodes,
                     "threads": torch.get_num_threads(), "resumed_from_step": result.resumed_from_step},
        "budget": {**budget, "name": budget_name(settings)},
        "ledger_anchor": asdict(anchor),
        "rows": {"train": len(real), "test": len(test), "canaries": extra_rows,
                 "dropped_by_unit_bound": result.dropped_rows},
        "pretraining": pretraining, **trained.card,
        "accuracy": {"private": result.curve[-1]["test_accuracy"], "non_private_baseline": baseline.accuracy},
        "baseline": baseline.record(), "privacy_cost": privacy_cost(baseline.correct, result.model, test.tensors[:2]),
    })
    write_json(args.curve, result.curve)
    if checkpoint is not None:
        checkpoint.discard()
    print(f"train: epsilon {result.epsilon:.3f} (delta {plan.delta:g}, noise {plan.noise_multiplier:.3f}, "
          f"q {plan.sample_rate:.4f}, {plan.steps} steps{', resumed at step %d' % result.resumed_from_step if result.resumed_from_step else ''}), "
          f"test accuracy {result.curve[-1]['test_accuracy']:.3f}, budget {budget['spent_total']:.3f}/{budget['cap']:g}")
