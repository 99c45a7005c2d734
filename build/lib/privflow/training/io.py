"""What training reads and writes: the sealed splits, the public pretraining's weights, the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load as load_tensors
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import TensorDataset

from privflow.artifacts import read_json, write_json
from privflow.catalog import MODEL, MODEL_CARD, PRETRAINED, PRETRAIN_DESCRIPTION, split_file, split_identity
from privflow.crypto.vault import Vault
from privflow.data.texts import unpacked_texts
from privflow.modeling.models import build_model, load_weights, weights_of


def _open_split(vault: Vault, description: dict, split: str, folder: Path) -> dict[str, np.ndarray]:
    identity = split_identity(description["dataset"], description["snapshot_id"], split)
    return load_tensors(vault.open(folder / split_file(split), identity))


def load_split(vault: Vault, description: dict, split: str, folder: Path) -> TensorDataset:
    """(features, labels, unit index) of one sealed split."""
    tensors = _open_split(vault, description, split, folder)
    labels = torch.from_numpy(tensors["labels"])
    units = torch.from_numpy(tensors["units"]) if "units" in tensors else torch.arange(len(labels))
    return TensorDataset(torch.from_numpy(tensors["features"]), labels, units)


def load_text_split(vault: Vault, description: dict, split: str, folder: Path,
                    column: str) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(texts of `column`, labels, unit index) of one sealed split: the texts in memory only."""
    tensors = _open_split(vault, description, split, folder)
    labels = torch.from_numpy(tensors["labels"])
    units = torch.from_numpy(tensors["units"]) if "units" in tensors else torch.arange(len(labels))
    return unpacked_texts(tensors, column), labels, units


def read_pretrained(folder: Path) -> tuple[dict, dict | None]:
    """The pretrain stage's description, and its weights when public data was declared."""
    description = read_json(folder / PRETRAIN_DESCRIPTION)
    if not description["pretrained"]:
        return description, None
    return description, {"weights": load_file(folder / PRETRAINED), "fine_tune": description["fine_tune"]}


def save_model(model: nn.Module, out: Path, card: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights_of(model), out / MODEL)
    write_json(out / MODEL_CARD, card)


def load_model(model_dir: Path) -> tuple[nn.Module, dict]:
    card = read_json(model_dir / MODEL_CARD)
    if card["preset"] == "text":
        from privflow.modeling.text_classifier import text_classifier

        return text_classifier(card["text"], len(card["classes"]), load_file(model_dir / MODEL)), card
    shape = card.get("input_shape")
    model = build_model(card["preset"], len(card["features"]), len(card["classes"]), card["hidden_units"],
                        tuple(shape) if shape else None)
    load_weights(model, load_file(model_dir / MODEL))
    return model.eval(), card
