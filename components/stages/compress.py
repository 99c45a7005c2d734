"""Stage `compress`: structured and magnitude pruning, int8 quantization, an ONNX export.

Post-processing of a DP model spends no privacy only if it reads no private data, so this
stage reads the trained model and nothing else: dvc.yaml gives it no snapshot, split or
quarantine (a test checks). Where data is needed (calibration of static quantization, the
fidelity check of the compressed model, latency) it draws synthetic inputs uniformly from
[0, 1]^features, the range the schema's declared bounds scale every feature to. Accuracy on
the held-out split is measured by `train` and by `make bench`, not here.

Why ONNX (and onnxruntime for quantization and serving): a portable file with no pickle and
no Python code in it, served without torch by `privflow predict` or any ONNX runtime; torch's
own eager int8 path (`torch.ao.quantization`) and TorchScript are deprecated in torch 2.13.
"""

from __future__ import annotations

import copy
import gzip
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from jinja2 import Environment, PackageLoader
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from safetensors.torch import load_file, save
from torch import nn
from torch.nn.utils import prune

from privflow.artifacts import read_json, stage_paths, write_json
from privflow.errors import PrivflowError, run_stage
from privflow.modeling.models import build_model, load_weights, weights_of
from privflow.settings import load_settings
from privflow.stages.train import MODEL, MODEL_CARD

EXPORT = "model.int8.onnx.gz"  # gzip: magnitude pruning's zeros only shrink a file once compressed
SERVING_CARD = "serving.json"
MODEL_CARD_MD = "MODEL_CARD.md"
FIDELITY_INPUTS = 4096


def load_model(model_dir: Path) -> tuple[nn.Module, dict]:
    card = read_json(model_dir / MODEL_CARD)
    shape = card.get("input_shape")
    model = build_model(card["preset"], len(card["features"]), len(card["classes"]), card["hidden_units"],
                        tuple(shape) if shape else None)
    load_weights(model, load_file(model_dir / MODEL))
    return model.eval(), card


def synthetic_inputs(n_features: int, rows: int, seed: int = 0) -> torch.Tensor:
    """Uniform on [0, 1]^features: the scaled feature space, carrying no information about anyone."""
    return torch.from_numpy(np.random.default_rng(seed).random((rows, n_features), dtype=np.float32))


def prune_neurons(model: nn.Sequential, amount: float) -> nn.Sequential:
    """Structured pruning: drop the `amount` hidden units with the smallest incoming L2 norm
    from every Linear -> activation -> Linear pair, so the layers really get smaller."""
    layers = list(model)
    for index, layer in enumerate(layers):
        following = next((i for i in range(index + 1, len(layers)) if isinstance(layers[i], nn.Linear)), None)
        if not isinstance(layer, nn.Linear) or following is None or amount == 0:
            continue
        keep = max(1, round(layer.out_features * (1 - amount)))
        kept = torch.linalg.vector_norm(layer.weight, dim=1).argsort(descending=True)[:keep].sort().values
        layers[index] = _linear(layer.weight[kept], layer.bias[kept])
        after = layers[following]
        layers[following] = _linear(after.weight[:, kept], after.bias)
    return nn.Sequential(*layers).eval()


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


def prune_magnitude(model: nn.Module, amount: float) -> nn.Module:
    """Zero the `amount` smallest-magnitude weights across all Linear and Conv layers, permanently."""
    layers = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    if amount > 0:
        prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=amount)
        for module, name in layers:
            prune.remove(module, name)
    return model


def sparsity(model: nn.Module) -> float:
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    return float(sum((w == 0).sum() for w in weights) / sum(w.numel() for w in weights))


def export_onnx(model: nn.Module, n_features: int, path: Path) -> None:
    """fp32 ONNX with a dynamic batch dimension (torch's dynamo exporter)."""
    example = (synthetic_inputs(n_features, 2),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, example, dynamo=True, verbose=False,
                                    input_names=["features"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},))
    program.save(str(path))


class _SyntheticCalibration(CalibrationDataReader):
    def __init__(self, n_features: int, batches: int = 16, rows: int = 64):
        self._batches = iter([{"features": synthetic_inputs(n_features, rows, seed).numpy()}
                              for seed in range(1, batches + 1)])

    def get_next(self) -> dict | None:
        return next(self._batches, None)


def quantize_onnx(fp32: Path, int8: Path, model: nn.Module, n_features: int) -> str:
    """int8 weights. Conv models: static QDQ with activations calibrated on synthetic inputs;
    Linear-only models: dynamic (weights int8, activations quantized per batch at run time)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if any(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in model.modules()):
            quantize_static(str(fp32), str(int8), _SyntheticCalibration(n_features), quant_format=QuantFormat.QDQ,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
            return "static int8 (QDQ), calibrated on synthetic inputs"
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
        return "dynamic int8 (weights int8, activations per batch)"


def session(model_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # one request per core
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def onnx_logits(runtime: ort.InferenceSession, features: np.ndarray) -> np.ndarray:
    return runtime.run(None, {"features": features.astype(np.float32, copy=False)})[0]


def _median_ms(run, repeats: int) -> float:
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
            timings[f"fp32_torch_batch{batch}_ms"] = _median_ms(lambda: dense(inputs), repeats)
            array = inputs.numpy()
            timings[f"int8_onnx_batch{batch}_ms"] = _median_ms(lambda: onnx_logits(runtime, array), repeats)
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


def weight_bytes(model: nn.Module, bytes_per_weight: int) -> int:
    """Weights at the given width plus fp32 biases: the payload, without any file format."""
    return sum(p.numel() * (bytes_per_weight if name.endswith("weight") else 4) for name, p in model.named_parameters())


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
    return session(raw), card


def write_model_card(out_dir: Path, card: dict, training: dict, compression: dict) -> None:
    env = Environment(loader=PackageLoader("privflow.reporting", "templates"), trim_blocks=True, lstrip_blocks=True)
    text = env.get_template("model_card.md.j2").render(card=card, training=training, compression=compression)
    (out_dir / MODEL_CARD_MD).write_text(text, encoding="utf-8")


def main() -> None:
    args = stage_paths(__doc__, "model", "training", "out", "metrics")
    settings = load_settings(args.dataset).compress
    model, card = load_model(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    compression = compress_model(model, len(card["features"]), settings, args.out)
    write_json(args.out / SERVING_CARD, {k: card[k] for k in ("dataset", "run_id", "snapshot_id", "features",
                                                              "classes")})
    write_json(args.metrics, compression)
    write_model_card(args.out, card, read_json(args.training), compression)
    sizes = compression["size_bytes"]
    print(f"compress: {compression['parameters']['dense']} -> {compression['parameters']['after_structured']} "
          f"parameters, sparsity {compression['sparsity']:.2f}, weights {sizes['fp32_weights']} B fp32 -> "
          f"{sizes['int8_weights']} B int8, agreement with fp32 {compression['fidelity']['agreement']:.4f}")


if __name__ == "__main__":
    run_stage(main)
