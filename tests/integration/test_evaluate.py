"""The evaluate stage over a really sealed test split and a saved model: what it computes, what it
refuses, and that it writes aggregates only."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import save as save_tensors

from privflow.artifacts import open_vault, write_json
from privflow.catalog import DATASET, split_file, split_identity
from privflow.errors import EXIT_REFUSED, run_stage
from privflow.modeling.models import accuracy, build_model
from privflow.stages import evaluate
from privflow.training.io import save_model

SNAPSHOT = "hmac-sha256:" + "cd" * 32
CLASSES = ["stays", "leaves", "moves"]
FEATURES = 4


def sealed_test_split(folder, features: np.ndarray, labels: np.ndarray, snapshot: str = SNAPSHOT):
    """The encrypt stage's test split and description, as it writes them."""
    folder.mkdir(parents=True)
    payload = save_tensors({"features": features.astype(np.float32), "labels": labels.astype(np.int64),
                            "units": np.arange(len(labels), dtype=np.int64)})
    open_vault().seal(payload, split_identity("people", snapshot, "test"), folder / split_file("test"))
    write_json(folder / DATASET, {"dataset": "people", "snapshot_id": snapshot, "classes": CLASSES,
                                  "features": [f"f{i}" for i in range(FEATURES)]})


def people(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose class follows their first two features: 'stays' most often, 'moves' rarely."""
    rng = np.random.default_rng(seed)
    features = rng.random((rows, FEATURES))
    labels = np.where(features[:, 0] > 0.3, 0, np.where(features[:, 1] > 0.25, 1, 2))
    return features, labels


def saved(folder, model: torch.nn.Module) -> None:
    save_model(model, folder, {"preset": "mlp", "hidden_units": 16, "features": [f"f{i}" for i in range(FEATURES)],
                               "classes": CLASSES, "dataset": "people", "snapshot_id": SNAPSHOT})


def fitted(features: np.ndarray, labels: np.ndarray) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("mlp", FEATURES, len(CLASSES), 16)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    x, y = torch.from_numpy(features.astype(np.float32)), torch.from_numpy(labels)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def run_evaluate(monkeypatch, tmp_path) -> dict:
    metrics = tmp_path / "metrics" / "evaluate.json"
    monkeypatch.setattr(sys, "argv", ["evaluate", "--dataset", "people", "--model", str(tmp_path / "train"),
                                      "--data", str(tmp_path / "encrypt"), "--metrics", str(metrics)])
    run_stage(evaluate.main)
    return json.loads(metrics.read_text())


def test_a_model_that_learned_is_scored_as_train_scores_it_and_beats_the_constant_answer(tmp_path, monkeypatch):
    features, labels = people(600, seed=1)
    model = fitted(*people(2000, seed=2))
    saved(tmp_path / "train", model)
    sealed_test_split(tmp_path / "encrypt", features, labels)
    result = run_evaluate(monkeypatch, tmp_path)
    x, y = torch.from_numpy(features.astype(np.float32)), torch.from_numpy(labels)
    assert result["accuracy"] == accuracy(model, x, y) > 0.9  # the same figure train's accuracy is
    assert result["records"] == 600 and result["classes_answered"] == 3
    constant = result["versus_constant"]
    assert constant["class"] == "stays" and constant["accuracy"] == pytest.approx(float((labels == 0).mean()))
    assert constant["outcome"] == "better" and constant["interval_95"][0] > 0
    predicted = model(x).argmax(dim=1).numpy()
    for index, row in enumerate(result["classes"]):
        members = labels == index
        assert row["records"] == int(members.sum())
        assert row["recall"] == pytest.approx((predicted[members] == index).mean())
    # aggregates only: no record's value, label or prediction
    assert set(result) == {"run_id", "records", "accuracy", "balanced_accuracy", "classes_answered", "versus_constant", "classes",
                           "min_class_records"}
    assert all(set(row) == {"class", "records", "recall", "answered_share"} for row in result["classes"])


def test_a_model_that_answers_one_class_for_everyone_is_named_as_such(tmp_path, monkeypatch, capsys):
    features, labels = people(400, seed=3)
    model = build_model("mlp", FEATURES, len(CLASSES), 16)
    with torch.no_grad():  # what DP-SGD can leave under a tight budget: the output layer's bias decides
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    saved(tmp_path / "train", model)
    sealed_test_split(tmp_path / "encrypt", features, labels)
    result = run_evaluate(monkeypatch, tmp_path)
    assert result["accuracy"] == result["versus_constant"]["accuracy"] > 0.65  # reads well on its own
    assert result["classes_answered"] == 1 and result["versus_constant"]["outcome"] == "no better"
    assert result["balanced_accuracy"] == pytest.approx(1 / 3)
    assert "does no better than always answering 'stays'" in capsys.readouterr().out


def test_a_model_of_another_snapshot_is_refused_with_what_to_do(tmp_path, monkeypatch, capsys):
    features, labels = people(50, seed=4)
    saved(tmp_path / "train", build_model("mlp", FEATURES, len(CLASSES), 16))
    sealed_test_split(tmp_path / "encrypt", features, labels, snapshot="hmac-sha256:" + "ef" * 32)
    with pytest.raises(SystemExit) as stopped:
        run_evaluate(monkeypatch, tmp_path)
    assert stopped.value.code == EXIT_REFUSED
    said = capsys.readouterr().err
    assert "was trained on snapshot" in said and "run `privflow run`" in said and "Traceback" not in said
    assert not (tmp_path / "metrics" / "evaluate.json").exists()
