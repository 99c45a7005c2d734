"""DP training through the real stage: SIGKILL and resume under one charge, DPDDP on 2 gloo
processes with the epsilon of one process, user-level DP on people with several rows."""

from __future__ import annotations

import json

import pytest

from privflow.demo_data import demo_table
from tests.workspace import demo_workspace, make_workspace

pytestmark = pytest.mark.slow


@pytest.fixture
def workspace(tmp_path):
    return demo_workspace(tmp_path)


def test_sigkilled_training_resumes_from_its_checkpoint_under_the_same_charge(workspace):
    workspace.run("dvc", "repro", "encrypt@breast_cancer", "pretrain@breast_cancer", check=True)
    workspace.edit_params(train={"epochs": 400, "checkpoint_every_epochs": 100})
    workspace.kill_train_at_first_checkpoint()
    ledger = workspace.open_ledger()
    (charge,) = ledger.charges()
    workspace.run("dvc", "repro", "train@breast_cancer", check=True)
    metrics = json.loads(workspace.metrics("train").read_text())
    assert metrics["run_id"] == charge.run_id and len(ledger.charges()) == 1  # resumed, not charged again
    assert metrics["training"]["resumed_from_step"] >= 100 * 7
    assert metrics["privacy"]["accountant_history"] == [[charge.noise_multiplier, charge.sample_rate, charge.steps]]
    assert metrics["privacy"]["epsilon_spent"] == pytest.approx(charge.epsilon, rel=1e-9)
    assert not workspace.checkpoint().exists()  # removed once the model is out


def test_dpddp_on_two_gloo_processes_gives_the_epsilon_of_one(workspace):
    workspace.run("dvc", "repro", "train@breast_cancer", check=True)
    single = json.loads(workspace.metrics("train").read_text())
    workspace.edit_params(train={"processes": 2})
    workspace.run("dvc", "repro", "train@breast_cancer", check=True)
    double = json.loads(workspace.metrics("train").read_text())
    assert double["training"]["processes"] == 2 and double["run_id"] != single["run_id"]
    for key in ("noise_multiplier", "sample_rate", "steps", "epsilon_spent", "accountant_history"):
        assert double["privacy"][key] == single["privacy"][key], key
    assert double["accuracy"]["private"] > 0.85 and single["accuracy"]["private"] > 0.85
    assert len(workspace.open_ledger().charges()) == 2


def test_several_rows_per_person_train_with_user_level_dp_when_bounded(tmp_path):
    header, rows = demo_table()
    rows = [r for r in rows if len(r) == len(header)]
    people = [r[:] for r in rows]
    for index, row in enumerate(people):  # three visits per patient
        row[0] = f"P-{index // 3:06d}"
    workspace = make_workspace(tmp_path / "ws", header, people)
    schema = (workspace.repo / "schemas" / "breast_cancer.yaml").read_text()
    (workspace.repo / "schemas" / "breast_cancer.yaml").write_text(
        schema.replace("patient_id: {type: string, unique: true,", "patient_id: {type: string,"))
    refused = workspace.run("dvc", "repro", "train@breast_cancer")
    assert refused.returncode != 0 and "set privacy.max_rows_per_unit" in refused.stderr.lower()
    workspace.edit_params(privacy={"max_rows_per_unit": 2})
    workspace.run("dvc", "repro", check=True)
    metrics = json.loads(workspace.metrics("train").read_text())
    dataset = json.loads((workspace.artifacts("encrypt") / "dataset.json").read_text())
    units = dataset["splits"]["train"]["units"]
    assert metrics["privacy"]["unit_level"] == "user" and metrics["privacy"]["rows_per_unit_bound"] == 2
    dropped, rows_in = metrics["rows"]["dropped_by_unit_bound"], metrics["rows"]["train"]
    assert rows_in - 2 * units <= dropped <= rows_in - units and dropped > 0  # each keeps 1 or 2
    assert metrics["privacy"]["sample_rate"] == pytest.approx(1 / -(-units // 64))
    report = (workspace.reports() / "report.html").read_text()
    assert "User-level privacy: the (ε, δ) protects each patient_id" in report
    assert "Training kept at most 2 records per patient_id" in report
    assert "3 records" not in report and "several_rows_per_unit" in dataset  # no one person's count, anywhere
    assert "max_rows_per_unit" not in dataset
