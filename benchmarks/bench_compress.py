"""Compression per model: size, single-thread CPU latency and test accuracy, before and after.

Each row trains a DP model (DP-SGD at epsilon 3, delta 1e-5, the pipeline's trainer) on a demo
dataset's train split, compresses it with the compress stage's code, and scores the fp32 model
and the int8 ONNX export on the held-out split (demo data: scoring it here costs nobody
privacy). `mlp-32` is the demo's preset as configured; `mlp-1024` a wider one, where weights
dominate the file as in production models; `cnn` a small conv net on scikit-learn's 8x8
digits, which gets static int8 (calibrated on synthetic inputs).
Goals (issue 7): int8 alone >= 3.9x smaller, >= 2x faster at batch 1 and 256, accuracy
within 1 point. A row's prune share is the one asked; `pruned` is what the stage kept under its
fidelity floor (privflow.modeling.compress), `agreement` the served export's with fp32.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from privflow.modeling.compress import compress_model
from privflow.modeling.export import onnx_logits, session
from privflow.modeling.models import accuracy  # noqa: E402
from privflow.privacy.accounting import plan_dp_sgd  # noqa: E402
from privflow.training.demo_splits import demo_splits as demo_split_of
from privflow.settings import CompressSettings, TrainSettings  # noqa: E402
from privflow.training.loop import train_private

OUT = ROOT / "bench-results" / "compress.json"
INT8_ONLY = CompressSettings(structured_amount=0.0, prune_amount=0.0, latency_repeats=200)
PRUNED = [CompressSettings(structured_amount=0.0, prune_amount=amount, latency_repeats=200) for amount in (0.2, 0.5)]


def demo_splits(name: str, folder: Path) -> tuple[TensorDataset, TensorDataset]:
    """A demo dataset's valid rows, encoded and split by person as the encrypt stage does."""
    from privflow.demo_data import write_demo_data

    write_demo_data(folder)
    source = folder / ("breast_cancer.csv" if name == "breast_cancer" else "churn.csv.gz")
    splits = demo_split_of(name, source, ROOT / "params.yaml")
    return splits.train, splits.test


def digits_splits() -> tuple[TensorDataset, TensorDataset]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    features = (digits.data / 16).astype(np.float32)  # pixel range 0..16 -> [0, 1]
    test = np.arange(len(features)) % 4 == 0
    labels = digits.target.astype(np.int64)
    return (TensorDataset(torch.from_numpy(features[~test]), torch.from_numpy(labels[~test])),
            TensorDataset(torch.from_numpy(features[test]), torch.from_numpy(labels[test])))


def dp_model(train: TensorDataset, test: TensorDataset, hidden: int, **overrides) -> nn.Module:
    settings = TrainSettings(**{"model": "mlp", "hidden_units": hidden, "epochs": 15, "batch_size": 128,
                                "learning_rate": 0.5, "max_grad_norm": 1.0, "target_epsilon": 3.0,
                                "target_delta": 1e-5, **overrides})
    plan = plan_dp_sgd(rows=len(train), batch_size=settings.batch_size, epochs=settings.epochs,
                       target_epsilon=3.0, target_delta=1e-5, accountant="prv")
    n_classes = int(train.tensors[1].max()) + 1
    return train_private(train, test, plan, settings, n_classes).model.eval()


def measure(label: str, model: nn.Module, test: TensorDataset, settings: CompressSettings, work: Path) -> dict:
    out = work / label.replace(" ", "-")
    out.mkdir()
    metrics = compress_model(model, test.tensors[0].shape[1], settings, out)
    import gzip

    runtime = session(gzip.decompress((out / "model.int8.onnx.gz").read_bytes()))
    predicted = onnx_logits(runtime, test.tensors[0].numpy()).argmax(1)
    int8_accuracy = float((predicted == test.tensors[1].numpy()).mean())
    latency, sizes = metrics["latency"], metrics["size_bytes"]
    return {
        "model": label, "prune_amount_asked": settings.prune_amount, "prune_amount": metrics["prune_amount"],
        "agreement": metrics["fidelity"]["agreement"], "quantization": metrics["quantization"],
        "fp32_weight_bytes": sizes["fp32_weights"], "int8_weight_bytes": sizes["int8_weights"],
        "fp32_onnx_bytes": sizes["fp32_onnx"], "int8_file_bytes": sizes["int8_onnx_gzip"],
        "weights_smaller_x": sizes["fp32_weights"] / sizes["int8_weights"],
        "file_smaller_x": sizes["fp32_onnx"] / sizes["int8_onnx_gzip"],
        "speedup_batch1_x": latency["fp32_torch_batch1_ms"] / latency["int8_onnx_batch1_ms"],
        "speedup_batch256_x": latency["fp32_torch_batch256_ms"] / latency["int8_onnx_batch256_ms"],
        "latency_ms": latency, "accuracy_fp32": accuracy(model, *test.tensors), "accuracy_int8": int8_accuracy,
    }


def main() -> None:
    results = []
    with tempfile.TemporaryDirectory() as base:
        work = Path(base)
        churn_train, churn_test = demo_splits("churn", work / "data")
        cancer_train, cancer_test = demo_splits("breast_cancer", work / "data")
        digits_train, digits_test = digits_splits()
        models = [("mlp-32 breast_cancer", dp_model(cancer_train, cancer_test, 32), cancer_test),
                  ("mlp-1024 churn", dp_model(churn_train, churn_test, 1024), churn_test),
                  ("cnn digits", dp_model(digits_train, digits_test, 16, model="cnn", input_shape=(1, 8, 8)), digits_test)]
        for label, model, test in models:
            for settings in (INT8_ONLY, *PRUNED):
                results.append(measure(f"{label} prune {settings.prune_amount:.0%} asked", model, test, settings, work))
    table = Table("model", "pruned", "agreement", "quantization", "weights x smaller", "file x smaller",
                  "x faster b1", "x faster b256", "acc fp32", "acc int8", "delta pts",
                  title="compression (goals: int8 >= 3.9x smaller, >= 2x faster, <= 1 point)")
    for r in results:
        table.add_row(r["model"], f"{r['prune_amount']:.1%}", f"{r['agreement']:.4f}", r["quantization"].split(" (")[0],
                      f"{r['weights_smaller_x']:.2f}",
                      f"{r['file_smaller_x']:.2f}", f"{r['speedup_batch1_x']:.1f}", f"{r['speedup_batch256_x']:.1f}",
                      f"{r['accuracy_fp32']:.4f}", f"{r['accuracy_int8']:.4f}",
                      f"{100 * (r['accuracy_int8'] - r['accuracy_fp32']):+.2f}")
    Console(width=200).print(table)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"results": results}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
