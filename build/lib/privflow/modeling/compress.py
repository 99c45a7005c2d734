"""Compression of a trained model: prune, export, quantize, and measure size, latency and fidelity."""

from __future__ import annotations

import copy
import gzip
import tempfile
from pathlib import Path

from safetensors.torch import save
from torch import nn

from privflow.catalog import EXPORT
from privflow.modeling.export import export_onnx, fidelity, latency_ms, quantize_onnx, session
from privflow.modeling.models import weights_of
from privflow.modeling.pruning import prune_magnitude, prune_neurons, sparsity, weight_bytes


def compress_model(model: nn.Module, n_features: int, settings, out_dir: Path) -> dict:
    """Prune, export, quantize, measure; writes the gzip'd int8 ONNX file; returns the metrics.
    `model` itself is left as it is (the dense reference for latency and fidelity)."""
    dense, working = model, copy.deepcopy(model)
    smaller = prune_neurons(working, settings.structured_amount) if isinstance(working, nn.Sequential) else working
    pruned = prune_magnitude(smaller, settings.prune_amount)
    with tempfile.TemporaryDirectory(dir=out_dir) as work:  # the model only: DP output, not private data
        fp32, int8 = Path(work) / "model.fp32.onnx", Path(work) / "model.int8.onnx"
        export_onnx(pruned, n_features, fp32)
        method = quantize_onnx(fp32, int8, pruned, n_features)
        fp32_bytes, int8_bytes = fp32.stat().st_size, int8.read_bytes()
    (out_dir / EXPORT).write_bytes(gzip.compress(int8_bytes, compresslevel=9, mtime=0))
    runtime = session(int8_bytes)
    return {
        "structured_amount": settings.structured_amount, "prune_amount": settings.prune_amount,
        "sparsity": sparsity(pruned), "quantization": method, "export": EXPORT,
        "parameters": {"dense": sum(p.numel() for p in dense.parameters()),
                       "after_structured": sum(p.numel() for p in smaller.parameters())},
        "size_bytes": {"fp32_safetensors": len(save(weights_of(dense))), "fp32_weights": weight_bytes(dense, 4),
                       "int8_weights": weight_bytes(pruned, 1), "fp32_onnx": fp32_bytes,
                       "int8_onnx": len(int8_bytes), "int8_onnx_gzip": (out_dir / EXPORT).stat().st_size},
        "latency": latency_ms(dense, runtime, n_features, settings.latency_repeats),
        "fidelity": fidelity(dense, runtime, n_features),
    }
