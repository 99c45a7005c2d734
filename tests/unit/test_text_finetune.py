"""A real pretrained encoder from an installed package, fine-tuned under privflow's DP step:
its files verified by hash, loaded offline; the top's clipped sums exact against the
per-sample definition; each mode trains what it says; real public text trains under DP."""

from __future__ import annotations

import copy
import dataclasses
import hashlib

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from benchmarks.bench_audit import audit_settings, audited_run, labelled, prepared_for_audit
from privflow.data.public_text import LABELS, film_reviews
from privflow.errors import PrivflowError
from privflow.modeling.text_encoder import load_encoder, load_tokenizer, pretrained, tokenize
from privflow.privacy.accounting import plan_dp_sgd
from privflow.privacy.audit import draw_text_canaries
from privflow.privacy.dp_sgd import PrivateGradient, unsupported_parameters
from privflow.settings import TrainSettings
from privflow.training.loop import train_private
from privflow.training.baseline import Schedule
from privflow.training.text_finetune import encoder_top, frozen_outputs, text_baseline
from tests.unit.test_dp_training import reference_clipped_sum

MINILM = pretrained("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(MINILM)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(MINILM, 16)


def test_the_encoder_is_the_pinned_real_model(encoder):
    assert sum(p.numel() for p in encoder.parameters()) == 22_565_376
    assert len(encoder.encoder.layer) == 6 and encoder.config.hidden_size == 384
    # pretrained, not random: sentences that say the same thing sit closer than unrelated ones
    tok = load_tokenizer(MINILM, 32)
    ids, mask = tokenize(tok, ["a wonderful, moving film", "a beautiful and touching movie", "the invoice is overdue"])
    top, frozen = encoder_top(encoder, "head", 0, 2)
    packed = frozen_outputs(encoder, ids, mask, frozen)
    hidden, weights = packed[..., :-1], packed[..., -1:]
    pooled = torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=1)
    assert float(pooled[0] @ pooled[1]) > float(pooled[0] @ pooled[2]) + 0.2


def test_a_changed_weights_file_is_refused_before_loading():
    tampered = dataclasses.replace(MINILM, weights_sha256="0" * 64)
    with pytest.raises(PrivflowError, match=r"model.safetensors has sha256 53aa5117.*not the pinned 0000"):
        load_encoder(tampered)
    missing = dataclasses.replace(MINILM, package="no_such_model_package")
    with pytest.raises(PrivflowError, match=r"not installed.*public-models.txt"):
        load_encoder(missing)
    with pytest.raises(PrivflowError, match="choose one of"):
        pretrained("bert-large")


@pytest.mark.parametrize("mode, trained_layers", [("head", 0), ("last_layers", 2), ("all_layers", 6)])
def test_each_mode_trains_its_layers_and_the_dp_step_covers_all_of_them(encoder, mode, trained_layers):
    top, frozen = encoder_top(encoder, mode, 2, 2)
    assert frozen + len(top.layers) == 6 and len(top.layers) == trained_layers
    assert unsupported_parameters(top) == []  # Linear and LayerNorm only: privflow's step, exact
    # the copies start from the pretrained weights and training them leaves the encoder as it was
    if trained_layers:
        source = encoder.encoder.layer[frozen].attention.self.query.weight
        assert torch.equal(top.layers[0].attention.self.query.weight, source)
        assert top.layers[0].attention.self.query.weight.data_ptr() != source.data_ptr()


def test_clipped_sums_of_a_pretrained_layer_equal_the_per_sample_definition(encoder, tokenizer):
    top, frozen = encoder_top(encoder, "last_layers", 1, 2, seed=3)
    top = top.double().eval()  # no dropout: the reference and the engine see the same function
    ids, mask = tokenize(tokenizer, ["good", "a long and tedious film about nothing", "fine", "superb acting"])
    packed = frozen_outputs(encoder, ids, mask, frozen).double()
    labels = torch.tensor([1, 0, 1, 1])
    expected, norms = reference_clipped_sum(top, packed, labels, 0.05)
    assert (norms > 0.05).all(), "every text must be clipped for the test to bite"
    engine = PrivateGradient(top, 0.05)
    engine.accumulate(packed, labels)
    engine.release(None, 0.0, 1.0)
    for name, parameter in top.named_parameters():
        torch.testing.assert_close(parameter.grad, expected[name], rtol=1e-7, atol=1e-10)


@pytest.mark.slow
def test_real_reviews_train_under_dp_and_the_baseline_is_an_upper_reference(encoder):
    reviews = film_reviews()
    assert len(reviews) == 12_808 and {r.label for r in reviews} == set(LABELS)
    in_test = [hashlib.sha256(r.text.encode()).digest()[0] < 40 for r in reviews]  # the file runs film by film
    train = [r for r, t in zip(reviews, in_test) if not t][:1200]
    test = [r for r, t in zip(reviews, in_test) if t][:400]
    tokenizer = load_tokenizer(MINILM, 32)
    top, frozen = encoder_top(encoder, "head", 0, 2)

    def packed(part):
        return frozen_outputs(encoder, *tokenize(tokenizer, [r.text for r in part]), frozen), \
            torch.tensor([LABELS.index(r.label) for r in part])

    (x, y), (xt, yt) = packed(train), packed(test)
    t = TrainSettings(hidden_units=1, epochs=4, batch_size=200, learning_rate=1.0, max_grad_norm=1.0,
                      target_epsilon=3.0, target_delta=1e-4, device="cpu", noise_seed=5)
    plan = plan_dp_sgd(rows=len(y), batch_size=200, epochs=4, target_epsilon=3.0, target_delta=1e-4, accountant="prv")
    result = train_private(TensorDataset(x, y), TensorDataset(xt, yt), plan, t, 2, model=copy.deepcopy(top))
    majority = max(float(yt.float().mean()), 1 - float(yt.float().mean()))
    dp_accuracy = result.curve[-1]["test_accuracy"]
    assert result.epsilon <= 3.0 and dp_accuracy > majority + 0.05
    # as the pipeline makes it: from the same pretrained top (DP trained a copy), on the DP run's schedule
    baseline = text_baseline(top, (x, y), (xt, yt), Schedule(4, 200, None, 1.0, 0), learning_rate=1.0)
    assert baseline.accuracy >= dp_accuracy, baseline  # a baseline that loses to its DP twin is a bug


@pytest.mark.parametrize("rows_per_unit", [1, 2])
def test_lora_adapters_alone_train_and_their_clipped_sums_equal_the_per_sample_definition(encoder, tokenizer,
                                                                                          rows_per_unit):
    top, frozen = encoder_top(encoder, "lora", 1, 2, seed=3, lora_rank=4)
    trained = {n for n, p in top.named_parameters() if p.requires_grad}
    assert trained == {"classifier.weight", "classifier.bias"} | {
        f"layers.0.attention.self.{target}.lora_{part}.weight" for target in ("query", "value") for part in "ab"}
    assert unsupported_parameters(top) == []  # the adapters are plain Linear layers: privflow's step
    top = top.double().eval()
    with torch.no_grad():  # B starts at zero, which would make A's gradients vanish: give it a value
        for module in top.modules():
            if hasattr(module, "lora_b"):
                module.lora_b.weight.normal_(0, 0.05)
    texts = ["good", "a long and tedious film about nothing", "fine", "superb acting"]
    packed = frozen_outputs(encoder, *tokenize(tokenizer, texts), frozen).double()
    labels = torch.tensor([1, 0, 1, 1])
    expected, norms = reference_clipped_sum(top, packed, labels, 0.05, rows_per_unit=rows_per_unit)
    assert (norms > 0.05).all()
    engine = PrivateGradient(top, 0.05)
    engine.accumulate(packed, labels, None, rows_per_unit)
    engine.release(None, 0.0, 1.0)
    for name, parameter in top.named_parameters():
        if parameter.requires_grad:
            torch.testing.assert_close(parameter.grad, expected[name], rtol=1e-7, atol=1e-10)


def test_dp_training_changes_the_adapters_predictions_and_never_the_pretrained_weights(encoder, tokenizer):
    """opacus#820: with Opacus and PEFT, LoRA weights were silently corrupted. Here the trained
    adapters must move the predictions, the frozen weights must stay bit for bit, and the
    merged Linear served after training must compute the trained function."""
    from privflow.modeling.text_classifier import merge_lora

    reviews = film_reviews()[:256]
    top, frozen = encoder_top(encoder, "lora", 1, 2, seed=0, lora_rank=4)
    packed = frozen_outputs(encoder, *tokenize(tokenizer, [r.text for r in reviews]), frozen)
    labels = torch.tensor([LABELS.index(r.label) for r in reviews])
    frozen_before = {n: p.detach().clone() for n, p in top.named_parameters() if not p.requires_grad}
    untrained = copy_of(top)
    t = TrainSettings(hidden_units=1, epochs=3, batch_size=64, learning_rate=0.5, max_grad_norm=1.0,
                      target_epsilon=8.0, target_delta=1e-4, device="cpu", noise_seed=1)
    plan = plan_dp_sgd(rows=len(labels), batch_size=64, epochs=3, target_epsilon=8.0, target_delta=1e-4, accountant="prv")
    result = train_private(TensorDataset(packed, labels), TensorDataset(packed[:64], labels[:64]), plan, t, 2,
                           model=top)
    trained = result.model
    for name, before in frozen_before.items():
        assert torch.equal(dict(trained.named_parameters())[name], before), name
    adapters = [m for m in trained.modules() if hasattr(m, "lora_b")]
    assert adapters and all(float(m.lora_b.weight.abs().sum()) > 0 for m in adapters)
    with torch.no_grad():
        # the adapters alone, the classifier held at its trained weights: the logits move
        untrained.classifier.load_state_dict(trained.classifier.state_dict())
        moved = (trained(packed) - untrained(packed)).abs().max()
        assert float(moved) > 1e-3, "the trained adapters did not change the model's output"
        served = merge_lora(copy_of(trained))
        assert not any(hasattr(m, "lora_b") for m in served.modules())
        torch.testing.assert_close(served(packed), trained(packed), rtol=1e-4, atol=1e-5)


def copy_of(module):
    import copy

    return copy.deepcopy(module).eval()


def test_the_frozen_pass_runs_in_bf16_only_where_native_and_close_to_fp32(encoder, tokenizer, monkeypatch):
    from privflow.training import text_finetune
    from privflow.training.text_finetune import frozen_precision, native_bf16

    cpu = torch.device("cpu")
    ids, mask = tokenize(tokenizer, [r.text for r in film_reviews()[:80]])
    assert frozen_precision(encoder, ids, mask, 5, "fp32", cpu) == ("fp32", None)
    precision, deviation = frozen_precision(encoder, ids, mask, 5, "bf16", cpu)  # asked for: taken, and measured
    assert precision == "bf16" and 0 < deviation < 0.02
    exact = frozen_outputs(encoder, ids, mask, 5)
    fast = frozen_outputs(encoder, ids, mask, 5, precision="bf16")
    assert fast.dtype == torch.float32 and torch.equal(fast[..., -1], exact[..., -1])  # the mask channel exact
    assert not torch.equal(fast, exact)  # really computed in bf16
    assert float((fast - exact)[..., :-1].norm() / exact[..., :-1].norm()) < 0.02
    if native_bf16(cpu):  # auto takes bf16 here, unless it strays further from fp32 than the tolerance
        assert frozen_precision(encoder, ids, mask, 5, "auto", cpu) == ("bf16", deviation)
        monkeypatch.setattr(text_finetune, "BF16_TOLERANCE", deviation / 2)
        assert frozen_precision(encoder, ids, mask, 5, "auto", cpu) == ("fp32", deviation)
    else:  # emulated bf16 would be slower than fp32: auto never tries it
        assert frozen_precision(encoder, ids, mask, 5, "auto", cpu) == ("fp32", None)


def test_the_bf16_check_reads_public_reviews_and_never_the_private_texts(encoder, tokenizer):
    """The deviation is published in the model card and the report: computed from the private
    texts, it would leak them outside the DP guarantee."""
    from privflow.training.text_finetune import frozen_precision, prepare_text_training, public_check_tokens

    t = TrainSettings(model="text", text={"fine_tune": "last_layers", "max_tokens": 16, "frozen_precision": "bf16"},
                      hidden_units=1, epochs=1, batch_size=8, learning_rate=0.1, max_grad_norm=1.0,
                      target_epsilon=1.0, target_delta=1e-5, device="cpu")
    reviews = film_reviews()
    held_back = labelled(reviews[-8:])
    cards = [prepare_text_training(t, "feedback", 2, (labelled(reviews[start:start + 8]), held_back)).card
             for start in (1000, 2000)]
    public = frozen_precision(encoder, *public_check_tokens(tokenizer), 5, "bf16", torch.device("cpu"))
    assert [(c["frozen_precision"], c["frozen_deviation_from_fp32"]) for c in cards] == [public, public]
    private = tokenize(tokenizer, [r.text for r in reviews[1000:1008]])
    assert frozen_precision(encoder, *private, 5, "bf16", torch.device("cpu"))[1] != public[1]


# Per mode, the epochs at which a trainer without noise is caught (the canaries are memorised),
# at benchmarks/bench_audit.py's settings: the bound without noise, 3 canary draws each, was
# 0.49-0.56 for the head at 30 epochs (so 150 here), 1.34-1.44 for LoRA at 30 and 0.57-1.11 at 10
# (8 draws), against a claim of 0.25; with noise, 0.0 in every run.
AUDIT_EPOCHS = {"head": 150, "lora": 10}
# One fixed draw of the canaries, the sampling, the noise and dropout. A correct trainer fails
# the gate by chance: at 95% confidence in at most 1 run in 20, and here in far fewer (28 noised
# LoRA runs at these settings got at most 59 of 100 guesses right; 68 fail), yet CI drew 68 once
# (2026-12-06). Seeded, the tests check the trainer and the gate, not CI's luck; the chance
# itself is the bench's to measure, over fresh draws.
AUDIT_SEED = 2026


@pytest.fixture(scope="module", params=list(AUDIT_EPOCHS))
def audit_inputs(request):
    """Real reviews and 1,000 canary texts, prepared as the train stage prepares them: the
    canaries take the real texts' way (tokenizer, frozen encoder), then join the training rows."""
    t = audit_settings(request.param, AUDIT_EPOCHS[request.param], noise_seed=AUDIT_SEED)
    canaries = draw_text_canaries(1000, 2, np.random.default_rng(AUDIT_SEED))
    text, train = prepared_for_audit(t, canaries)
    assert text.canaries.features.shape == (1000, 16, 385) and text.canaries.texts == canaries.texts
    assert len(train) == 400 + int(canaries.included.sum())
    return t, text, train


def test_text_canaries_are_texts_no_one_wrote_each_different():
    canaries = draw_text_canaries(300, 3, np.random.default_rng(1))
    assert len(set(canaries.texts)) == 300 and set(canaries.labels) == {0, 1, 2}
    assert all(len(text.split()) == 6 and text.replace(" ", "").isalpha() for text in canaries.texts)
    assert 100 < canaries.included.sum() < 200 and "random letters" in canaries.kind


@pytest.mark.slow
def test_the_text_audit_fails_a_trainer_without_noise(audit_inputs):
    torch.manual_seed(AUDIT_SEED)  # dropout in a trained layer
    result = audited_run(*audit_inputs, noise_off=True)
    assert not result.passed and result.epsilon_lower_bound > result.claimed_epsilon, result
    assert result.canary_kind == "texts of 6 words of random letters"


@pytest.mark.slow
def test_the_text_audit_passes_the_correct_trainer(audit_inputs):
    torch.manual_seed(AUDIT_SEED)
    result = audited_run(*audit_inputs, noise_off=False)
    assert result.passed and result.epsilon_lower_bound <= result.claimed_epsilon, result


def test_the_text_models_pruning_is_halved_until_its_decisions_on_public_text_stay(tmp_path):
    """As for the tabular models (test_compress): prune_amount is a ceiling. The tries run the
    top alone on the frozen bottom's output, caught once; the copy chosen exports (it is not
    made under inference mode, whose tensors the exporter cannot trace)."""
    from privflow.modeling.compress import FIDELITY_FLOOR, pruning_amounts
    from privflow.modeling.text_classifier import text_classifier
    from privflow.modeling.text_export import (_pruned_within_the_floor, _reference_pass, _torch_logits,
                                               export_text_onnx, public_tokens)

    card = {"encoder": "all-MiniLM-L6-v2", "trained_layers": 0, "fine_tune": "head", "frozen_layers": 6,
            "max_tokens": 16}
    torch.manual_seed(0)
    model = text_classifier(card, 2)
    public = public_tokens(card, 96)
    reference = _reference_pass(model, public)
    pruned, amount, tried = _pruned_within_the_floor(model, 0.8, reference)
    assert [t["amount"] for t in tried] == pruning_amounts(0.8)[:len(tried)] and len(tried) > 1, tried
    assert amount == tried[-1]["amount"] < 0.8 and all(t["agreement"] < FIDELITY_FLOOR for t in tried[:-1])
    agreement = (_torch_logits(pruned, public).argmax(1) == reference[0].argmax(1)).mean()
    assert agreement == pytest.approx(tried[-1]["agreement"])  # the whole model decides as the top alone did
    assert agreement >= FIDELITY_FLOOR or amount == 0.0
    export_text_onnx(pruned, public, tmp_path / "pruned.onnx")
    assert (tmp_path / "pruned.onnx").stat().st_size > 80_000_000
    unpruned, none, no_tries = _pruned_within_the_floor(model, 0.0, reference)
    assert none == 0.0 and no_tries == [] and all(torch.equal(a, b) for a, b in
                                                  zip(unpruned.parameters(), model.parameters()))
    quantization_falls_back_to_fp32_products_below_the_floor(model, tmp_path / "pruned.onnx", public, tmp_path)
    quantizing_says_nothing(tmp_path / "pruned.onnx", tmp_path / "quiet.onnx")


def quantizing_says_nothing(fp32, int8) -> None:
    """onnxruntime's quantizer sets the root logger to INFO as it loads (a line a node of the graph on a
    plain `dvc repro`'s console). In a process of its own: under pytest the root logger has
    handlers already, so the library's basicConfig does nothing here."""
    import subprocess
    import sys

    quantize = "import sys; from pathlib import Path; from privflow.modeling.text_export import " \
               "quantize_weights_int8; quantize_weights_int8(Path(sys.argv[1]), Path(sys.argv[2]))"
    done = subprocess.run([sys.executable, "-c", quantize, str(fp32), str(int8)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and int8.stat().st_size > 0, done.stderr[-2000:]
    assert (done.stdout, done.stderr) == ("", ""), done.stderr[-2000:]


def quantization_falls_back_to_fp32_products_below_the_floor(model, fp32, public, tmp_path) -> None:
    """The int8 export computes in int8 when it keeps the fidelity floor on public text, else its
    products are in fp32 (a floor no export can reach forces that here): what the metrics say is
    what the export's matrices do, and the fidelity is the chosen export's."""
    import onnx

    from privflow.modeling import text_export
    from privflow.modeling.export import probabilities, session

    def computes_in_int8(export: bytes) -> bool:
        levels = {next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "accuracy_level"), None)
                  for node in onnx.load_from_string(export).graph.node if node.op_type == "MatMulNBits"}
        assert len(levels) == 1, levels  # every matrix alike
        return levels == {text_export.INT8_COMPUTE}

    reference = probabilities(text_export._torch_logits(model, public)).argmax(1)
    for floor in (text_export.FIDELITY_FLOOR, 1.01):
        text_export.FIDELITY_FLOOR, kept = floor, text_export.FIDELITY_FLOOR
        try:
            export, fidelity, said = text_export._quantized_within_the_floor(text_export._torch_logits(model, public),
                                                                            fp32, tmp_path / "q.onnx", public)
        finally:
            text_export.FIDELITY_FLOOR = kept
        agreement = (probabilities(text_export.onnx_logits(session(export), public)).argmax(1) == reference).mean()
        assert fidelity["agreement"] == pytest.approx(agreement)
        assert computes_in_int8(export) == ("products in int8" in said), said
        if floor > 1:
            assert not computes_in_int8(export) and "products in fp32 (in int8 they agreed" in said, said
