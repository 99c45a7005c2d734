"""Sealed training checkpoints: a killed DP-SGD run resumes where it stopped, under its charge.

A checkpoint holds the weights, the optimizer's momentum, the accountant's history (the
steps already taken, never forgotten), the learning curve and the run id whose ledger
charge covers the whole plan. It lives outside the stage's DVC outputs (DVC deletes those
before re-running a stage), sealed by the vault like every artifact derived from private
rows, and bound by a fingerprint of everything that shapes the run: a checkpoint of
another snapshot, configuration or plan is discarded, never continued.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_tensors, save as save_tensors
from torch import nn

from privflow.artifacts import open_vault
from privflow.crypto.vault import ArtifactIdentity, Vault
from privflow.modeling.models import load_weights, weights_of
from privflow.privacy.accounting import DpSgdPlan
from privflow.privacy.noise import NoiseSource
from privflow.settings import Settings

ROOT = Path(".privflow") / "checkpoints"
_HEADER = 8


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class CheckpointState:
    run_id: str
    plan: dict
    step: int
    history: list[list[float]]  # the accountant's [(noise multiplier, sample rate, steps)]
    curve: list[dict]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    generators: dict[str, torch.Tensor]  # seeded (development) runs only


class Checkpoint:
    def __init__(self, vault: Callable[[], Vault], dataset: str, snapshot_id: str, key: str, root: Path = ROOT):
        """`vault` is called only when a checkpoint is read or written: a run refused before
        training never touches the keyring."""
        self.path = root / dataset / "train.sealed"
        self._open_vault, self.key = vault, key
        self._identity = ArtifactIdentity(dataset, "train", "checkpoint", snapshot_id)

    def read(self) -> CheckpointState | None:
        """The checkpoint of this very configuration, if one was left; another one is removed."""
        if not self.path.exists():
            return None
        blob = self._open_vault().open(self.path, self._identity)
        size = int.from_bytes(blob[:_HEADER], "big")
        meta = json.loads(blob[_HEADER:_HEADER + size])
        if meta.pop("key") != self.key:
            self.discard()
            return None
        tensors = load_tensors(blob[_HEADER + size:])
        groups = {g: {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(g + ".")}
                  for g in ("model", "optimizer", "generators")}
        return CheckpointState(**meta, **groups)

    def write(self, state: CheckpointState) -> None:
        meta = json.dumps({"key": self.key, "run_id": state.run_id, "plan": state.plan, "step": state.step,
                           "history": state.history, "curve": state.curve}).encode()
        tensors = {f"{group}.{name}": tensor.detach().cpu().contiguous()
                   for group in ("model", "optimizer", "generators")
                   for name, tensor in getattr(state, group).items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open_vault().seal(len(meta).to_bytes(_HEADER, "big") + meta + save_tensors(tensors), self._identity, self.path)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def capture_state(run_id: str, plan: DpSgdPlan, step: int, accountant, curve: list[dict], model: nn.Module,
           optimizer: torch.optim.Optimizer, noise: NoiseSource | None, sampler: NoiseSource):
    from privflow.training.checkpoint import CheckpointState

    momentum = {str(i): optimizer.state[p]["momentum_buffer"] for i, p in enumerate(optimizer.param_groups[0]["params"])
                if "momentum_buffer" in optimizer.state[p]}
    generators = {f"{name}.{k}": v for name, source in (("noise", noise), ("sampler", sampler))
                  if source is not None for k, v in source.state().items()}
    return CheckpointState(run_id, asdict(plan), step, [list(h) for h in accountant.history], curve,
                           weights_of(model), momentum, generators)


def restore_state(state, model: nn.Module, optimizer: torch.optim.Optimizer, accountant,
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


def checkpoint_for(settings: Settings, description: dict, pretraining: dict, bound: int):
    from privflow.training.checkpoint import Checkpoint, fingerprint

    key = fingerprint(description["snapshot_id"], settings.train.model_dump(mode="json"), bound,
                      settings.privacy.secure_noise, pretraining)
    return Checkpoint(open_vault, description["dataset"], description["snapshot_id"], key)
