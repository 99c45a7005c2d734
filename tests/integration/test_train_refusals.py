"""Training refuses before it decrypts: the vault is never opened for an over-budget run."""

from __future__ import annotations

import shutil
import sys

import pytest
import yaml

from privflow.artifacts import write_json
from privflow.crypto.vault import Vault
from privflow.errors import BudgetExceeded, PrivacyError
from privflow.privacy.accounting import plan_dp_sgd
from privflow.privacy.ledger import PrivacyLedger
from privflow.settings import LEDGER_ENV
from privflow.stages import train
from tests.conftest import ROOT
from tests.integration.test_ledger import charge_for

DESCRIPTION = {"dataset": "demo", "snapshot_id": "sha256:s", "privacy_unit": "patient_id",
               "several_rows_per_unit": False, "classes": ["a", "b"], "features": ["x"],
               "splits": {"train": {"rows": 1000}, "test": {"rows": 200}}}


@pytest.fixture
def project(tmp_path, monkeypatch):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"] = {"demo": params["datasets"]["breast_cancer"]}
    params["privacy"].update(epsilon_cap=3.2, ledger=str(tmp_path / "ledger.sqlite"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_json(tmp_path / "data" / "dataset.json", DESCRIPTION)
    write_json(tmp_path / "pretrain" / "pretrain.json", {"pretrained": False, "reason": "no public data declared"})
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    monkeypatch.setenv(LEDGER_ENV, str(tmp_path / "ledger.sqlite"))  # as params.yaml says
    monkeypatch.chdir(tmp_path)
    opened = []
    monkeypatch.setattr(Vault, "open", lambda self, *a, **k: opened.append(a) or pytest.fail("decrypted"))
    # the splits here are only a description: their pre-charge authentication is tested end to end
    monkeypatch.setattr(Vault, "authenticate", lambda self, src, identity: 0)
    monkeypatch.setattr(sys, "argv", ["train", "--dataset", "demo", "--data", "data", "--pretrained", "pretrain", "--out", "out", "--metrics", "m.json",
                                      "--curve", "c.json"])
    return tmp_path, opened


def test_overspend_is_refused_before_any_decryption(project):
    folder, opened = project
    PrivacyLedger(folder / "ledger.sqlite").charge(charge_for(2.0, dataset="demo"), cap=3.2)
    with pytest.raises(BudgetExceeded, match="over the cap 3.2"):
        train.main()
    assert opened == []
    assert len(PrivacyLedger(folder / "ledger.sqlite").charges("demo")) == 1
    assert not (folder / "out").exists()


def test_several_rows_per_person_are_refused_before_decryption(project):
    folder, opened = project
    write_json(folder / "data" / "dataset.json", {**DESCRIPTION, "several_rows_per_unit": True})
    with pytest.raises(PrivacyError, match="some patient_id has several rows.*privacy.max_rows_per_unit"):
        train.main()
    assert opened == [] and PrivacyLedger(folder / "ledger.sqlite").charges() == []


def test_charge_is_what_the_plan_says(project):
    folder, opened = project
    # a run that fits is charged its plan before decryption (which the spy then refuses)
    with pytest.raises(pytest.fail.Exception):
        train.main()
    (charge,) = PrivacyLedger(folder / "ledger.sqlite").charges("demo")
    plan = plan_dp_sgd(rows=1000, batch_size=128, epochs=15, target_epsilon=3.0, target_delta=1e-5, accountant="prv")
    assert (charge.steps, charge.epsilon) == (plan.steps, pytest.approx(plan.epsilon))
    assert len(opened) == 1


def test_model_that_cannot_take_the_features_is_refused_before_the_charge(project):
    folder, opened = project
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["datasets"]["demo"]["train"] = {"model": "cnn", "input_shape": [1, 2, 2]}  # 4 inputs, the data has 1
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    from privflow.preflight import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"dataset demo: train.input_shape \[1, 2, 2\] does not fit 1"):
        train.main()
    assert opened == [] and PrivacyLedger(folder / "ledger.sqlite").charges() == []


def test_a_failure_after_decryption_keeps_its_charge_and_says_so(project, monkeypatch):
    from privflow.errors import IntegrityError

    folder, _ = project

    def corrupt(self, *args, **kwargs):
        raise IntegrityError("train.sealed: chunk 0 failed authentication")

    monkeypatch.setattr(Vault, "open", corrupt)
    with pytest.raises(IntegrityError) as caught:
        train.main()
    (charge,) = PrivacyLedger(folder / "ledger.sqlite").charges("demo")
    assert any(f"charge of epsilon {charge.epsilon:.3f} stands" in note and "decrypted" in note
               for note in caught.value.__notes__)
