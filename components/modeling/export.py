"""The int8 ONNX export: exported by torch's ONNX exporter, quantized and served by onnxruntime.

Why ONNX (and onnxruntime for quantization and serving): a portable file with no pickle and
no Python code in it, served without torch by `privflow predict` or any ONNX runtime; torch's
own eager int8 path (`torch.ao.quantization`) and TorchScript are deprecated in torch 2.13.

Which exporter: torch's TorchScript-based one (`dynamo=False`), not the torch.export-based
default. Both trace the same eager model to the same graph; measured side by side here
(README), the default took 6.6 s on a first export in a process (1.8 s later) against 0.04 s
for a 1k-parameter MLP, and 15.4 s against 1.7 s for the 22.6 M-parameter text classifier,
with the same logits (max difference 4e-7) and the same int8 agreement. It is deprecated
since torch 2.9 and torch is pinned (2.13); the day it goes, `dynamo=True` with
`dynamic_shapes` is the one-line change back, and the export tests say so.
"""

from __future__ import annotations

import gzip
import logging
import statistics
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from torch import nn

from privflow.artifacts import read_json
from privflow.catalog import EXPORT, SERVING_CARD
from privflow.errors import PrivflowError
from privflow.modeling.pruning import synthetic_inputs


FIDELITY_INPUTS = 4096


def export_traced(model: nn.Module, example: dict[str, torch.Tensor], path: Path) -> None:
    """fp32 ONNX of `model` called on the named example inputs (in that order), the batch
    dimension of every input and of the logits left dynamic."""
    batch = {name: {0: "batch"} for name in [*example, "logits"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes: see the docstring
        torch.onnx.export(model, tuple(example.values()), str(path), dynamo=False, verbose=False,
                          input_names=list(example), output_names=["logits"], dynamic_axes=batch, opset_version=17)


def export_onnx(model: nn.Module, n_features: int, path: Path) -> None:
    """fp32 ONNX of a table, image or sequence model, its batch dimension dynamic."""
    export_traced(model, {"features": synthetic_inputs(n_features, 2)}, path)


class _SyntheticCalibration(CalibrationDataReader):
    def __init__(self, n_features: int, batches: int = 16, rows: int = 64):
        self._batches = iter([{"features": synthetic_inputs(n_features, rows, seed).numpy()}
                              for seed in range(1, batches + 1)])

    def get_next(self) -> dict | None:
        return next(self._batches, None)


@contextmanager
def quantizer_quiet() -> Iterator[None]:
    """onnxruntime's quantizers log through the root logger: advice to pre-process the model
    first (`WARNING:root:Please consider to run pre-processing...`) and, from MatMulNBits, a
    line a node and two a matrix (557 for the text model's graph). On a stage's stderr that is
    a plain `dvc repro`'s console, and nothing in it is for a user to act on: while they run,
    only errors pass."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_onnx(fp32: Path, int8: Path, model: nn.Module, n_features: int) -> str:
    """8-bit weights. Conv models: static QDQ with activations calibrated on synthetic inputs;
    Linear-only models: dynamic (activations quantized per batch at run time). Weights are
    unsigned (U8U8), not onnxruntime's default signed (U8S8): on x86 CPUs without VNNI its
    U8S8 kernels multiply with VPMADDUBSW, whose 16-bit sums saturate (onnxruntime's
    quantization guide), and the export may run on any CPU. Measured on an AVX2-only EPYC,
    decisions agreeing with fp32: dynamic 0.901 (U8S8) vs 0.998 (U8U8), static 0.831 vs 0.985."""
    with warnings.catch_warnings(), quantizer_quiet():
        warnings.simplefilter("ignore")
        if any(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in model.modules()):
            quantize_static(str(fp32), str(int8), _SyntheticCalibration(n_features), quant_format=QuantFormat.QDQ,
                            weight_type=QuantType.QUInt8, activation_type=QuantType.QUInt8)
            return "static int8 (QDQ), calibrated on synthetic inputs"
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QUInt8)
        return "dynamic int8 (8-bit weights, activations per batch)"


def session(model_bytes: bytes, threads: int = 1) -> ort.InferenceSession:
    """One thread by default: latency is measured per request, one request per core. `threads`
    > 1 for a pass over many inputs; 0: onnxruntime's choice (every physical core)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def onnx_logits(runtime: ort.InferenceSession, inputs: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
    """Logits for encoded feature rows, or for a text model's named inputs (token ids, mask)."""
    if isinstance(inputs, dict):
        return runtime.run(None, inputs)[0]
    return runtime.run(None, {"features": inputs.astype(np.float32, copy=False)})[0]


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax of an export's logits, row by row (numpy: serving needs no torch)."""
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def median_ms(run, repeats: int) -> float:
    run()  # warm-up
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        timings.append((time.perf_counter() - start) * 1e3)
    return statistics.median(timings)


@torch.inference_mode()
def latency_ms(dense: nn.Module, runtime: ort.InferenceSession, n_features: int, repeats: int) -> dict:
    """Median single-thread latency of the dense torch model and of the int8 export."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        timings = {}
        for batch in (1, 256):
            inputs = synthetic_inputs(n_features, batch, seed=batch)
            timings[f"fp32_torch_batch{batch}_ms"] = median_ms(lambda: dense(inputs), repeats)
            array = inputs.numpy()
            timings[f"int8_onnx_batch{batch}_ms"] = median_ms(lambda: onnx_logits(runtime, array), repeats)
        return timings
    finally:
        torch.set_num_threads(threads)


@torch.inference_mode()
def fidelity(dense: nn.Module, runtime: ort.InferenceSession, n_features: int) -> dict:
    """How closely the export follows the trained model, on synthetic inputs only."""
    inputs = synthetic_inputs(n_features, FIDELITY_INPUTS, seed=7)
    reference = torch.softmax(dense(inputs), dim=1).numpy()
    exported = torch.softmax(torch.from_numpy(onnx_logits(runtime, inputs.numpy())), dim=1).numpy()
    return {"inputs": FIDELITY_INPUTS, "source": "synthetic, uniform on the scaled feature range",
            "agreement": float((reference.argmax(1) == exported.argmax(1)).mean()),
            "max_probability_gap": float(np.abs(reference - exported).max())}


def load_export(model_dir: Path) -> tuple[ort.InferenceSession, dict]:
    """The int8 ONNX model and its serving card (features in order, classes), as `predict` needs."""
    try:
        raw = gzip.decompress((model_dir / EXPORT).read_bytes())
        card = read_json(model_dir / SERVING_CARD)
    except FileNotFoundError as missing:
        raise PrivflowError(f"{missing.filename}: no exported model; run the pipeline first") from None
    except (OSError, EOFError):
        raise PrivflowError(f"{model_dir / EXPORT}: not a complete gzip file; run `dvc checkout` or the "
                            "compress stage again") from None
    return session(raw, threads=0), card  # scoring a file: every core
