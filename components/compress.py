"""Stage `compress`: magnitude pruning + dynamic int8 quantization, measured.

Post-processing of a DP model costs no privacy. The held-out test split is decrypted only
to measure accuracy before and after (an evaluation, reported as such); latency is timed on
synthetic inputs in the feature range [0, 1], which reveal nothing.
"""

from __future__ import annotations

import copy
import io
import statistics
import time
import warnings
import zlib
from pathlib import Path

import torch
from jinja2 import Environment, PackageLoader
from safetensors.torch import load_file, save
from torch import nn
from torch.nn.utils import prune

from components.artifacts import open_vault, read_json, stage_paths, write_json
from components.encrypt import DATASET
from components.errors import run_stage
from components.models import accuracy, build_model
from components.settings import load_settings
from components.train import MODEL, MODEL_CARD, load_split

EXPORT = "model_int8.torchscript.pt"
MODEL_CARD_MD = "MODEL_CARD.md"


def load_model(model_dir: Path) -> tuple[nn.Module, dict]:
    card = read_json(model_dir / MODEL_CARD)
    model = build_model(card["preset"], len(card["features"]), len(card["classes"]), card["hidden_units"])
    model.load_state_dict(load_file(model_dir / MODEL))
    return model.eval(), card


def prune_globally(model: nn.Module, amount: float) -> nn.Module:
    """Zero the `amount` smallest-magnitude weights across all Linear layers, permanently."""
    layers = [(m, "weight") for m in model.modules() if isinstance(m, nn.Linear)]
    if amount > 0:
        prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=amount)
        for module, name in layers:
            prune.remove(module, name)
    return model


def quantize_int8(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def export_torchscript(model: nn.Module) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), buffer)
    return buffer.getvalue()


@torch.inference_mode()
def median_latency_ms(model: nn.Module, n_features: int, batch: int, repeats: int) -> float:
    inputs = torch.rand(batch, n_features)
    model(inputs)  # warm-up
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(inputs)
        timings.append((time.perf_counter() - start) * 1e3)
    return statistics.median(timings)


def int8_weight_bytes(model: nn.Module) -> int:
    """Payload of a dynamically quantized model: int8 weights, fp32 biases, scale + zero point."""
    total = 0
    for module in model.modules():
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            bias = module.bias()
            total += module.weight().numel() + (bias.numel() * 4 if bias is not None else 0) + 8
    return total


def sparsity(model: nn.Module) -> float:
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    return float(sum((w == 0).sum() for w in weights) / sum(w.numel() for w in weights))


def write_model_card(out_dir: Path, card: dict, training: dict, compression: dict) -> None:
    env = Environment(loader=PackageLoader("components", "templates"), trim_blocks=True, lstrip_blocks=True)
    text = env.get_template("model_card.md.j2").render(
        card=card, training=training, compression=compression, export_name=EXPORT)
    (out_dir / MODEL_CARD_MD).write_text(text, encoding="utf-8")


def main() -> None:
    args = stage_paths(__doc__, "model", "data", "training", "out", "metrics")
    settings = load_settings(args.dataset).compress
    model, card = load_model(args.model)
    dense_bytes = save(model.state_dict())
    test = load_split(open_vault(), read_json(args.data / DATASET), "test", args.data)
    accuracy_fp32 = accuracy(model, *test.tensors)
    dense = copy.deepcopy(model)  # pruning works in place; latency is compared with the dense model
    pruned = prune_globally(model, settings.prune_amount)
    pruned_sparsity = sparsity(pruned)
    pruned_zlib = len(zlib.compress(save(pruned.state_dict()), 9))
    quantized = quantize_int8(pruned)
    exported = export_torchscript(quantized)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / EXPORT).write_bytes(exported)
    n = len(card["features"])
    latency = {f"{kind}_batch{b}_ms": median_latency_ms(m, n, b, settings.latency_repeats)
               for kind, m in (("fp32", dense), ("int8", quantized)) for b in (1, 256)}
    compression = {
        "prune_amount": settings.prune_amount, "sparsity": pruned_sparsity,
        "size_bytes": {"fp32_safetensors": len(dense_bytes), "pruned_zlib": pruned_zlib,
                       "int8_weights": int8_weight_bytes(quantized), "int8_torchscript": len(exported)},
        "latency": latency,
        "accuracy": {"fp32": accuracy_fp32, "pruned_int8": accuracy(quantized, *test.tensors)},
    }
    write_json(args.metrics, compression)
    write_model_card(args.out, card, read_json(args.training), compression)
    print(f"compress: sparsity {pruned_sparsity:.2f}, weights {len(dense_bytes)} B fp32 -> "
          f"{compression['size_bytes']['int8_weights']} B int8, accuracy {accuracy_fp32:.3f} -> "
          f"{compression['accuracy']['pruned_int8']:.3f}")


if __name__ == "__main__":
    run_stage(main)
