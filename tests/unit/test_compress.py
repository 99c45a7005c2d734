"""Compression: smaller and faster, the export faithful, and no private data read."""

from __future__ import annotations

import gzip
import io
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from privflow.artifacts import write_json
from privflow.catalog import EXPORT
from privflow.crypto.keys import Keyring
from privflow.crypto.vault import Vault
from privflow.data.schema_file import load_schema
from privflow.errors import DatasetError, PrivflowError, SchemaError
from privflow.modeling.compress import FIDELITY_FLOOR, compress_model, pruning_amounts
from privflow.modeling.export import FIDELITY_INPUTS, export_onnx, load_export, onnx_logits, quantize_onnx, session
from privflow.modeling.models import build_model
from privflow.modeling.predict import score
from privflow.modeling.pruning import prune_magnitude, prune_neurons, sparsity, synthetic_inputs
from privflow.settings import CompressSettings, IngestSettings
from privflow.stages import compress
from tests.conftest import DEMO_SCHEMA, ROOT

SETTINGS = CompressSettings(structured_amount=0.0, prune_amount=0.2, latency_repeats=3)
PRIVATE_OUTPUTS = ("ingest", "validate", "encrypt")


def trained_like(n_features=30, hidden=64, classes=2, seed=0) -> nn.Sequential:
    """An MLP with weights of a trained model's scale (deterministic)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(n_features, hidden), nn.Tanh(), nn.Linear(hidden, classes))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    return model.eval()


def test_compress_stage_depends_on_no_private_data():
    """dvc.yaml gives compress the trained model only: no snapshot, split, decisions or source."""
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["compress"]["do"]
    inputs = [str(d) for d in stage["deps"] if not d.startswith("${privflow_code}/")] + [stage["cmd"]]
    for stage_name in PRIVATE_OUTPUTS:
        assert not any(f"/{stage_name}" in text for text in inputs), (stage_name, inputs)
    assert not any("${item.source}" in text for text in inputs)


def test_compress_main_never_opens_the_vault_or_keyring(tmp_path, monkeypatch):
    model_dir = tmp_path / "train"
    model = trained_like(hidden=32)
    model_dir.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, model_dir / "model.safetensors")
    write_json(model_dir / "model.json", {"run_id": "r", "preset": "mlp", "hidden_units": 32,
                                          "features": [f"x{i}" for i in range(30)], "classes": ["a", "b"],
                                          "snapshot_id": "sha256:s", "dataset": "breast_cancer"})
    training = yaml.safe_load((ROOT / "params.yaml").read_text())  # only to prove the file is not needed
    assert training
    write_json(tmp_path / "train.json", {"privacy": {"sample_rate": 0.1, "noise_multiplier": 1.0,
               "max_grad_norm": 1.0, "steps": 10, "epsilon_spent": 1.0, "delta": 1e-5, "accountant": "prv",
               "privacy_unit": "patient_id"}, "rows": {"train": 100, "test": 20},
               "accuracy": {"private": 0.9, "non_private_baseline": 0.95}})
    from privflow.modeling.evaluation import class_evaluation  # the evaluate stage's aggregates, as it writes them

    labels = torch.tensor([0] * 12 + [1] * 8)
    write_json(tmp_path / "evaluate.json", class_evaluation(labels, labels, ["a", "b"]))
    monkeypatch.setattr(Vault, "open", lambda *a, **k: pytest.fail("compress decrypted something"))
    monkeypatch.setattr(Keyring, "open", lambda *a, **k: pytest.fail("compress opened the keyring"))
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["compress", "--dataset", "breast_cancer", "--model", str(model_dir),
                                      "--training", "train.json", "--evaluation", "evaluate.json", "--out", "out",
                                      "--metrics", "m.json"])
    compress.main()
    assert (tmp_path / "out" / EXPORT).exists()
    card = (tmp_path / "out" / "MODEL_CARD.md").read_text()
    assert "| always answering 'a', the most frequent class | 0.6000 |" in card
    assert "Recall by class: a 1.000 (12 records), b not shown (fewer than 10 records)." in card


@pytest.mark.parametrize("preset, n_features, shape", [("mlp", 30, None), ("cnn", 64, (1, 8, 8)),
                                                      ("lstm", 32, (32, 1)), ("transformer", 32, (32, 1))])
def test_onnx_export_round_trip_matches_every_preset_at_any_batch(tmp_path, preset, n_features, shape):
    """Traced at a batch of 2: a size the tracer froze into the graph would show at 1 or 500."""
    torch.manual_seed(0)
    model = build_model(preset, n_features, 3, 16, shape).eval()
    export_onnx(model, n_features, tmp_path / "m.onnx")
    runtime = session((tmp_path / "m.onnx").read_bytes())
    for rows in (1, 500):
        inputs = synthetic_inputs(n_features, rows, seed=3)
        with torch.no_grad():
            np.testing.assert_allclose(onnx_logits(runtime, inputs.numpy()), model(inputs).numpy(), atol=1e-5)


def test_a_session_over_many_inputs_uses_the_threads_asked_for_and_computes_the_same(tmp_path):
    """Latency is timed on one thread; a pass over a whole sample (text fidelity) or a scored
    file (predict: 0, every core) may take more, for the same logits."""
    model = trained_like(n_features=256, hidden=512)
    export_onnx(model, 256, tmp_path / "m.onnx")
    raw, inputs = (tmp_path / "m.onnx").read_bytes(), synthetic_inputs(256, 2000, seed=5).numpy()
    one, two = session(raw), session(raw, threads=2)
    assert (one.get_session_options().intra_op_num_threads, two.get_session_options().intra_op_num_threads) == (1, 2)
    np.testing.assert_allclose(onnx_logits(two, inputs), onnx_logits(one, inputs), rtol=1e-5, atol=1e-6)


def test_int8_export_is_faithful_smaller_and_written_compressed(tmp_path):
    model = trained_like(n_features=256, hidden=512)  # weights dominate biases (kept fp32)
    metrics = compress_model(model, 256, SETTINGS.model_copy(update={"prune_amount": 0.0}), tmp_path)
    assert metrics["fidelity"]["agreement"] >= 0.98  # int8 alone barely moves a decision
    sizes = metrics["size_bytes"]
    assert sizes["int8_weights"] * 3.9 < sizes["fp32_weights"]
    assert sizes["int8_onnx_gzip"] < sizes["int8_onnx"] < sizes["fp32_onnx"]
    runtime, _ = session(gzip.decompress((tmp_path / EXPORT).read_bytes())), None
    assert onnx_logits(runtime, synthetic_inputs(256, 4).numpy()).shape == (4, 2)


def test_magnitude_pruning_zeros_weights_and_shrinks_the_compressed_file(tmp_path):
    """The mechanism, below the fidelity floor's choice of how much (next test)."""
    sizes = {}
    for amount in (0.0, 0.8):
        pruned = prune_magnitude(trained_like(hidden=256), amount)
        assert sparsity(pruned) == pytest.approx(amount, abs=0.01)
        fp32, int8 = tmp_path / f"{amount}.onnx", tmp_path / f"{amount}.int8.onnx"
        export_onnx(pruned, 30, fp32)
        quantize_onnx(fp32, int8, pruned, 30)
        sizes[amount] = len(gzip.compress(int8.read_bytes(), compresslevel=9, mtime=0))
    assert sizes[0.8] < 0.6 * sizes[0.0]
    metrics = compress_model(trained_like(hidden=256), 30, SETTINGS.model_copy(update={"prune_amount": 0.0}), tmp_path)
    assert metrics["size_bytes"]["int8_onnx_gzip"] == sizes[0.0]  # the stage's file is that one


QUANTIZE = """
import sys
from pathlib import Path
from torch import nn
from privflow.modeling.export import quantize_onnx
quantize_onnx(Path(sys.argv[1]), Path(sys.argv[2]), nn.Linear(30, 2), 30)
"""


def test_quantizing_says_nothing_on_the_stages_console(tmp_path):
    """onnxruntime's quantizer advised pre-processing the model on every compress stage's stderr
    (a plain `dvc repro`'s console): nothing a user can act on. In a process of its own, as a
    stage: under pytest the root logger has handlers, so the advice would go to them instead."""
    fp32, int8 = tmp_path / "model.onnx", tmp_path / "model.int8.onnx"
    export_onnx(trained_like(hidden=32), 30, fp32)
    done = subprocess.run([sys.executable, "-c", QUANTIZE, str(fp32), str(int8)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and int8.stat().st_size > 0, done.stderr[-2000:]
    assert (done.stdout, done.stderr) == ("", ""), done.stderr[-2000:]


def test_pruning_that_moves_decisions_is_halved_until_the_export_keeps_them(tmp_path):
    """prune_amount is a ceiling: on a small model 20 % of its weights carry decisions (a
    418-weight payroll MLP agreed with its pruned export on 86.5 % of the check inputs), so
    the share is halved until the int8 export agrees on at least the floor; each try is said."""
    model = trained_like(hidden=8)
    metrics = compress_model(model, 30, SETTINGS.model_copy(update={"prune_amount": 0.4}), tmp_path)
    tried = metrics["pruning_tried"]
    assert [t["amount"] for t in tried] == pruning_amounts(0.4)[:len(tried)] and len(tried) > 1
    assert all(t["agreement"] < FIDELITY_FLOOR for t in tried[:-1]), tried
    assert metrics["prune_amount"] == tried[-1]["amount"] < metrics["prune_amount_asked"] == 0.4
    assert metrics["fidelity"]["agreement"] == tried[-1]["agreement"]
    assert metrics["fidelity"]["agreement"] >= FIDELITY_FLOOR or metrics["prune_amount"] == 0.0
    runtime = session(gzip.decompress((tmp_path / EXPORT).read_bytes()))  # what predict serves is the one chosen
    inputs = synthetic_inputs(30, FIDELITY_INPUTS, seed=7)
    with torch.no_grad():
        agreement = (onnx_logits(runtime, inputs.numpy()).argmax(1) == model(inputs).argmax(1).numpy()).mean()
    assert agreement == pytest.approx(metrics["fidelity"]["agreement"])
    assert pruning_amounts(0.2) == [0.2, 0.1, 0.05, 0.025, 0.0] and pruning_amounts(0.0) == [0.0]


def test_structured_pruning_removes_units_for_real():
    model = trained_like(hidden=8)
    with torch.no_grad():  # two dead units: no input weights, no bias, no output weights
        model[0].weight[[2, 5]] = 0
        model[0].bias[[2, 5]] = 0
        model[2].weight[:, [2, 5]] = 0
    smaller = prune_neurons(model, 0.25)
    assert (smaller[0].out_features, smaller[2].in_features) == (6, 6)
    inputs = synthetic_inputs(30, 100)
    with torch.no_grad():
        torch.testing.assert_close(smaller(inputs), model(inputs))  # tanh(0) = 0: nothing lost


def test_conv_models_get_static_int8_calibrated_on_synthetic_inputs(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 64, 10)).eval()
    with torch.no_grad():
        model[4].weight.mul_(5)  # a decisive classifier, as a trained one is (random init is not)
    metrics = compress_model(model, 64, SETTINGS.model_copy(update={"prune_amount": 0.0}), tmp_path)
    assert metrics["quantization"].startswith("static int8")
    assert metrics["fidelity"]["agreement"] >= 0.9


def test_bad_compress_settings_are_refused():
    with pytest.raises(ValueError, match="prune_amount"):
        CompressSettings(prune_amount=1.0)
    with pytest.raises(ValueError, match="structured_amount"):
        CompressSettings(prune_amount=0.1, structured_amount=-0.1)


@pytest.fixture
def served(tmp_path):
    """A compressed demo-shaped model and its serving card, as the compress stage leaves them."""
    schema = load_schema(DEMO_SCHEMA)
    features = [c for c in schema.columns if c not in ("patient_id", "diagnosis")]
    compress_model(trained_like(n_features=len(features)), len(features), SETTINGS, tmp_path)
    write_json(tmp_path / compress.SERVING_CARD, {"dataset": "breast_cancer", "run_id": "r", "snapshot_id": "s",
                                                  "features": features, "classes": schema.classes})
    return tmp_path, schema


def demo_csv(path, drop_column=None, bad_row=None):
    from privflow.demo_data import csv_text, demo_table

    header, rows = demo_table()
    rows = [r for r in rows if len(r) == len(header)][:50]
    if bad_row is not None:
        rows[bad_row - 1][header.index("mean_area")] = "lots"
    keep = [i for i, h in enumerate(header) if h not in (drop_column, "diagnosis")]
    path.write_text(csv_text([header[i] for i in keep], [[r[i] for i in keep] for r in rows]))
    return path


def test_predict_scores_valid_rows_and_names_the_rest(served, tmp_path):
    model_dir, schema = served
    assert load_export(model_dir)[0].get_session_options().intra_op_num_threads == 0  # a whole file: every core
    source = demo_csv(tmp_path / "new.csv", bad_row=7)
    scored = score(source, schema, IngestSettings(source=source), model_dir)
    # no target column needed; the demo's own defects (rows 3 and 10) are named too
    assert sorted(set(range(1, 51)) - set(scored.rows)) == [3, 7, 10]
    assert [f.describe(scored.spans, str(source)) for f in scored.failures] == [
        f"{source}: row 3, column mean_radius: failed coerce_float",
        f"{source}: row 7, column mean_area: failed coerce_float",
        f"{source}: row 10, column mean_texture: failed greater_than_or_equal_to(0.0)"]
    assert np.allclose(scored.probabilities.sum(axis=1), 1)
    lines = list(scored.lines())
    assert lines[0] == ["row", "prediction", "p_malignant", "p_benign"] and len(lines) == 48


def test_predict_needs_only_the_columns_the_model_reads(served, tmp_path):
    """New records may lack the person id the model never reads; a present one is still checked."""
    model_dir, schema = served
    source = demo_csv(tmp_path / "new.csv", drop_column="patient_id")
    scored = score(source, schema, IngestSettings(source=source), model_dir)
    assert sorted(set(range(1, 51)) - set(scored.rows)) == [3, 10]  # the demo's own defects, as with the id
    with_ids = demo_csv(tmp_path / "ids.csv")
    assert np.array_equal(score(with_ids, schema, IngestSettings(source=with_ids), model_dir).probabilities,
                          scored.probabilities)
    strict_id = schema.model_copy(update={"columns": {**schema.columns, "patient_id": schema.columns[
        "patient_id"].model_copy(update={"regex": "^X-"})}})
    failed = score(with_ids, strict_id, IngestSettings(source=with_ids), model_dir)
    assert failed.rows == [] and {f.column for f in failed.failures} >= {"patient_id"}


def test_predict_refusals_name_file_column_and_fix(served, tmp_path):
    model_dir, schema = served
    source = demo_csv(tmp_path / "new.csv", drop_column="mean_area")
    with pytest.raises(SchemaError, match=r"new.csv: no column 'mean_area', which the model reads; add it to the file "
                                          r"\(the label, ids and the schema's other columns may be left out\)"):
        score(source, schema, IngestSettings(source=source), model_dir)
    other = schema.model_copy(update={"columns": {k: v for k, v in schema.columns.items() if k != "worst_area"}})
    source = demo_csv(tmp_path / "new.csv", drop_column="worst_area")
    with pytest.raises(SchemaError, match="the model was trained on features"):
        score(source, other, IngestSettings(source=source), model_dir)
    with pytest.raises(PrivflowError, match="no exported model; run the pipeline first"):
        load_export(tmp_path / "nowhere")
    (model_dir / EXPORT).write_bytes(gzip.compress(b"onnx")[:-4])
    with pytest.raises(PrivflowError, match="not a complete gzip file"):
        load_export(model_dir)


def test_predict_on_a_headerless_file_shows_no_value_of_its_first_row(served, tmp_path):
    model_dir, schema = served
    source = demo_csv(tmp_path / "new.csv")
    lines = source.read_text().splitlines()
    source.write_text("\n".join(lines[1:]) + "\n")  # the header line lost: row 1 takes its place
    with pytest.raises(DatasetError, match=r"is the header line missing\?") as caught:
        score(source, schema, IngestSettings(source=source), model_dir)
    assert not any(value in str(caught.value) for value in lines[1].split(",") if len(value) > 2)


def test_exported_file_holds_no_pickle(served):
    model_dir, _ = served
    raw = gzip.decompress((model_dir / EXPORT).read_bytes())
    import onnx

    onnx.load_model(io.BytesIO(raw))  # a protobuf ONNX model, nothing else
    assert b"\x80\x04\x95" not in raw[:16]  # not a pickle stream
