"""Stage `compress`: structured and magnitude pruning, int8 quantization, an ONNX export.

Post-processing of a DP model spends no privacy only if it reads no private data, so this
stage reads the trained model and the figures train and evaluate published for the model
card, nothing else: dvc.yaml gives it no snapshot, split or quarantine (a test checks).
Where data is needed (calibration of static quantization, the fidelity check of the
compressed model, latency) it draws synthetic inputs uniformly from [0, 1]^features, the
range the schema's declared bounds scale every feature to. Accuracy on the held-out split is
measured by `train`, `evaluate` and `make bench`, not here.

Why ONNX (and onnxruntime for quantization and serving): a portable file with no pickle and
no Python code in it, served without torch by `privflow predict` or any ONNX runtime; torch's
own eager int8 path (`torch.ao.quantization`) and TorchScript are deprecated in torch 2.13.
"""

from __future__ import annotations

from privflow.artifacts import read_json, stage_paths, write_json
from privflow.catalog import SERVING_CARD
from privflow.errors import run_stage
from privflow.modeling.compress import compress_model
from privflow.reporting.model_card import write_model_card
from privflow.settings import load_settings
from privflow.training.io import load_model


def main() -> None:
    args = stage_paths(__doc__, "model", "training", "evaluation", "out", "metrics")
    settings = load_settings(args.dataset).compress
    model, card = load_model(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    if card["preset"] == "text":
        from privflow.modeling.text_export import compress_text_model

        compression = compress_text_model(model, card["text"], settings, args.out)
    else:
        compression = compress_model(model, len(card["features"]), settings, args.out)
    write_json(args.out / SERVING_CARD, {k: card[k] for k in ("dataset", "run_id", "snapshot_id", "features",
                                                              "classes", "text") if k in card})
    write_json(args.metrics, compression)
    write_model_card(args.out, card, read_json(args.training), read_json(args.evaluation), compression)
    sizes, parameters = compression["size_bytes"], compression["parameters"]
    asked, pruned = compression.get("prune_amount_asked", 0.0), compression["prune_amount"]
    backed_off = f" ({pruned:.1%} pruned of {asked:.1%} asked: the fidelity floor)" if pruned < asked else ""
    print(f"compress: {parameters['dense']} parameters, sparsity {compression['sparsity']:.2f}{backed_off}, "
          f"ONNX {sizes['fp32_onnx']} B fp32 -> {sizes['int8_onnx']} B int8, "
          f"agreement with fp32 {compression['fidelity']['agreement']:.4f}")


if __name__ == "__main__":
    run_stage(main)
