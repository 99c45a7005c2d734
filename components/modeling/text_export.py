"""Compression of a fine-tuned text classifier: prune, export to ONNX, quantize to int8, and
measure size, latency at batch 1 and 32, and fidelity on public text.

The classifier is the whole pretrained encoder plus the trained top (22.6 M parameters for
MiniLM), so here compression has something to compress. Every weight matrix and the token
embeddings (11.7 M) are stored as int8; activations stay fp32:
- matrices: onnxruntime's MatMulNBits at 8 bits, symmetric, per block of 32, computing in int8
  (accuracy_level 4: each activation row quantized per block of 32 as it enters, int8 dot
  products) where that keeps the fidelity floor on public text, else in fp32 (the weights
  dequantized on the fly): measured side by side (README), fp32 products made the export 2.75x
  slower than fp32 at batch 1, int8 products 0.90x, agreeing with fp32 on one review fewer of 512;
- embeddings: onnxruntime's dynamic int8 quantization of the Gather, per tensor.
Measured on a fine-tuned MiniLM over 512 public reviews (README): this agrees with fp32 on
99.8 % of them; dynamic int8 of the matrices too (activations quantized per batch) ran 2x
faster at batch 32 but agreed on only 96.5-96.9 %, too far from the model that was trained.
Magnitude pruning zeroes at most `prune_amount` of the trained top's weights only (halved
until the top's decisions on the public texts stay within the fidelity floor): 20 % of the
pretrained encoder's weights, pruned globally, changed 10 % of its predictions in fp32.
Fidelity and latency read public film reviews only (privflow.data.public_text), never the
dataset's rows: post-processing a DP model spends no privacy only if it reads no private data.
"""

from __future__ import annotations

import copy
import gzip
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

from privflow.catalog import EXPORT
from privflow.data.public_text import ORIGIN, film_reviews
from privflow.modeling.compress import FIDELITY_FLOOR, within_the_floor
from privflow.modeling.export import export_traced, median_ms, onnx_logits, probabilities, quantizer_quiet, session
from privflow.modeling.pruning import prune_magnitude, sparsity
from privflow.modeling.text_classifier import TextClassifier
from privflow.modeling.text_encoder import load_tokenizer, pretrained, tokenize

FIDELITY_TEXTS = 512
INPUTS = ("input_ids", "attention_mask")


def public_tokens(text_card: dict, count: int, seed: int = 3) -> dict[str, np.ndarray]:
    """`count` public reviews, tokenized as the model reads its texts."""
    reviews = film_reviews()
    chosen = np.random.default_rng(seed).permutation(len(reviews))[:count]
    tokenizer = load_tokenizer(pretrained(text_card["encoder"]), text_card["max_tokens"])
    ids, mask = tokenize(tokenizer, [reviews[i].text for i in chosen])
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}


def export_text_onnx(model: TextClassifier, example: dict[str, np.ndarray], path: Path) -> None:
    """fp32 ONNX taking token ids and attention masks, the batch dimension dynamic."""
    export_traced(model, {name: torch.from_numpy(example[name][:2]) for name in INPUTS}, path)


@torch.inference_mode()
def _torch_logits(model: TextClassifier, inputs: dict[str, np.ndarray], batch: int = 64) -> np.ndarray:
    ids, mask = (torch.from_numpy(inputs[name]) for name in INPUTS)
    return torch.cat([model(ids[i:i + batch], mask[i:i + batch]) for i in range(0, len(ids), batch)]).numpy()


def text_fidelity(reference_logits: np.ndarray, runtime, inputs: dict[str, np.ndarray]) -> dict:
    """How closely the int8 export follows the fp32 model (its logits on the same texts, given:
    a pass of the model over 512 texts is seconds on CPU), on public text only."""
    reference, exported = probabilities(reference_logits), probabilities(onnx_logits(runtime, inputs))
    return {"inputs": len(inputs["input_ids"]), "source": f"public text: {ORIGIN}",
            "agreement": float((reference.argmax(1) == exported.argmax(1)).mean()),
            "max_probability_gap": float(np.abs(reference - exported).max())}


@torch.inference_mode()
def text_latency_ms(model: TextClassifier, runtimes: dict, inputs: dict[str, np.ndarray], repeats: int) -> dict:
    """Median single-thread latency at batch 1 and 32: the torch model, the fp32 and int8 exports."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        timings = {}
        for batch in (1, 32):
            part = {name: inputs[name][:batch] for name in INPUTS}
            ids, mask = (torch.from_numpy(part[name]) for name in INPUTS)
            timings[f"fp32_torch_batch{batch}_ms"] = median_ms(lambda: model(ids, mask), repeats)
            for kind, runtime in runtimes.items():
                timings[f"{kind}_onnx_batch{batch}_ms"] = median_ms(lambda: onnx_logits(runtime, part), repeats)
        return timings
    finally:
        torch.set_num_threads(threads)


INT8_COMPUTE = 4  # MatMulNBits' accuracy_level: activations quantized per block to int8, int8 products


def quantize_weights_int8(fp32: Path, int8: Path, accuracy_level: int | None = INT8_COMPUTE) -> None:
    """int8 embeddings (dynamic Gather quantization), then int8 matrices (MatMulNBits, 8 bits).
    `accuracy_level` None: products in fp32 (the weights dequantized on the fly), for comparison."""
    import onnx

    with quantizer_quiet():
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

        logging.getLogger().setLevel(logging.ERROR)  # its first import set it to INFO (logging.basicConfig)
        embedded = int8.with_suffix(".gather.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(fp32), str(embedded), weight_type=QuantType.QInt8, op_types_to_quantize=["Gather"])
        config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, bits=8,
                                              op_types_to_quantize=("MatMul",), quant_axes=(("MatMul", 0),),
                                              accuracy_level=accuracy_level)
        quantizer = MatMulNBitsQuantizer(onnx.load(str(embedded)), algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(int8), use_external_data_format=False)
        embedded.unlink()


def _reference_pass(model: TextClassifier, public: dict[str, np.ndarray]) -> tuple[np.ndarray, list[torch.Tensor]]:
    """The fp32 model's logits on the public texts, and its top's inputs caught on the way in
    (the frozen bottom's output): every measure of the compressed model is against this one pass."""
    tops_input: list[torch.Tensor] = []
    catch = model.top.register_forward_pre_hook(lambda _, args: tops_input.append(args[0]))
    try:
        return _torch_logits(model, public), tops_input
    finally:
        catch.remove()


def _pruned_within_the_floor(model: TextClassifier, asked: float, reference: tuple[np.ndarray, list[torch.Tensor]]):
    """A copy of `model` with the largest share of its top pruned (at most `asked`, as
    privflow.modeling.compress.within_the_floor tries them) whose decisions on the public texts
    agree with the model's (`reference`: its `_reference_pass`) on at least FIDELITY_FLOOR of
    them, checked in torch before the one export; the share and the tries. Pruning touches the
    top only, so each try runs the top alone on the frozen bottom's output. With `asked` 0
    nothing is checked. The copies are made outside inference mode: the export could not trace
    inference tensors."""
    if asked == 0:
        return copy.deepcopy(model), 0.0, []
    logits, tops_input = reference
    decisions = logits.argmax(1)

    def attempt(amount: float) -> tuple[TextClassifier, float]:
        pruned = copy.deepcopy(model)
        prune_magnitude(pruned.top, amount)
        with torch.inference_mode():
            decided = torch.cat([pruned.top(part) for part in tops_input]).argmax(1).numpy()
        return pruned, float((decided == decisions).mean())

    return within_the_floor(asked, attempt)


def _quantized_within_the_floor(reference_logits: np.ndarray, fp32: Path, int8: Path, public: dict[str, np.ndarray]):
    """The int8 export with products in int8 if it decides as the fp32 model does (its logits on
    `public`) on at least FIDELITY_FLOOR of the public texts, else with products in fp32 (the
    weights dequantized on the fly: 2-3x slower at batch 1, agreed on one text more of 512 where
    measured). Returns its bytes, its fidelity, and the description of what was chosen and why."""
    threads = torch.get_num_threads()  # the whole sample in one pass: one thread took 27.5 s against 14.7 s on two
    quantize_weights_int8(fp32, int8)
    fidelity = text_fidelity(reference_logits, session(int8.read_bytes(), threads=threads), public)
    chosen = "products in int8, activations quantized per block as they enter"
    if fidelity["agreement"] < FIDELITY_FLOOR:
        chosen = (f"products in fp32 (in int8 they agreed with the fp32 model on {fidelity['agreement']:.4f} "
                  f"of the public texts, below the floor {FIDELITY_FLOOR})")
        quantize_weights_int8(fp32, int8, accuracy_level=None)
        fidelity = text_fidelity(reference_logits, session(int8.read_bytes(), threads=threads), public)
    return int8.read_bytes(), fidelity, (f"int8: matrices by MatMulNBits (8-bit weights, symmetric, blocks of 32; "
                                         f"{chosen}), embeddings by dynamic Gather quantization")


def compress_text_model(model: TextClassifier, text_card: dict, settings, out_dir: Path) -> dict:
    """Prune the classifier's matrices, export, quantize to int8, measure; writes the gzip'd
    int8 ONNX file and returns the metrics. `model` is the fp32 reference and is left as is."""
    public = public_tokens(text_card, FIDELITY_TEXTS)
    reference = _reference_pass(model, public)
    pruned, amount, tried = _pruned_within_the_floor(model, settings.prune_amount, reference)
    with tempfile.TemporaryDirectory(dir=out_dir) as work:  # the model only: DP output and public weights
        fp32, int8 = Path(work) / "model.fp32.onnx", Path(work) / "model.int8.onnx"
        export_text_onnx(pruned, public, fp32)
        int8_bytes, fidelity, quantization = _quantized_within_the_floor(reference[0], fp32, int8, public)
        fp32_bytes = fp32.read_bytes()
    (out_dir / EXPORT).write_bytes(gzip.compress(int8_bytes, compresslevel=9, mtime=0))
    repeats = max(3, settings.latency_repeats // 10)  # a batch of 32 texts takes a second on one core
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "prune_amount": amount, "prune_amount_asked": settings.prune_amount, "fidelity_floor": FIDELITY_FLOOR,
        "pruning_tried": tried, "pruned": "the trained top's weights", "sparsity": sparsity(pruned.top),
        "quantization": quantization,
        "export": EXPORT, "parameters": {"dense": parameters, "trained": text_card["trained_parameters"]},
        "size_bytes": {"fp32_weights": 4 * parameters, "fp32_onnx": len(fp32_bytes), "int8_onnx": len(int8_bytes),
                       "int8_onnx_gzip": (out_dir / EXPORT).stat().st_size},
        "latency": text_latency_ms(model, {"fp32": session(fp32_bytes), "int8": session(int8_bytes)}, public, repeats),
        "latency_repeats": repeats, "max_tokens": text_card["max_tokens"], "fidelity": fidelity,
    }
