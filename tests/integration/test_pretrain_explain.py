"""Public pretraining never touches private data or the budget; explanations say what they read."""

from __future__ import annotations

import gzip
import json
import shutil
import sys

import pytest
import yaml

from privflow.crypto.keys import Keyring
from privflow.crypto.vault import Vault
from privflow.data.feature_names import feature_names
from privflow.data.schema_file import load_schema
from privflow.demo_data import churn_table, csv_text, public_churn_table
from privflow.errors import PrivacyError
from privflow.privacy.ledger import PrivacyLedger
from privflow.settings import LEDGER_ENV, load_settings
from privflow.stages import explain, pretrain
from privflow.training.loop import initial_model
from tests.conftest import ROOT

# the churn schema's model inputs: 20 columns one-hot encoded, plus satisfaction's missing-indicator
CHURN_FEATURES = len(feature_names(load_schema(ROOT / "schemas" / "churn.yaml")))


@pytest.fixture
def project(tmp_path, monkeypatch):
    """The churn dataset's files in a temp project: private export, public sample, params."""
    private = tmp_path / "private" / "churn.csv.gz"
    private.parent.mkdir()
    private.write_bytes(gzip.compress(csv_text(*churn_table(rows=600)).encode(), mtime=0))
    public = tmp_path / "data" / "public" / "churn"
    public.mkdir(parents=True)
    (public / "sample.csv").write_text(csv_text(*public_churn_table(rows=1500)))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"] = {"churn": {**params["datasets"]["churn"], "source": str(private)}}
    params["datasets"]["churn"]["pretrain"]["epochs"] = 3
    params["privacy"]["ledger"] = str(tmp_path / "ledger.sqlite")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    monkeypatch.setenv(LEDGER_ENV, str(tmp_path / "ledger.sqlite"))
    monkeypatch.chdir(tmp_path)
    opened = []  # any attempt to decrypt or open keys is recorded (and refused)
    monkeypatch.setattr(Vault, "open", lambda self, *a, **k: opened.append(a) or pytest.fail("decrypted"))
    monkeypatch.setattr(Keyring, "open", lambda *a, **k: opened.append(a) or pytest.fail("opened keys"))
    return tmp_path, private, public, opened


def run_pretrain(monkeypatch, public, out):
    monkeypatch.setattr(sys, "argv", ["pretrain", "--dataset", "churn", "--public", str(public), "--out", str(out)])
    pretrain.main()
    return json.loads((out / "pretrain.json").read_text())


def test_pretraining_reads_public_data_only_and_charges_nothing(project, monkeypatch):
    folder, _, public, opened = project
    description = run_pretrain(monkeypatch, public, folder / "out")
    assert description["pretrained"] and description["privacy_spent"] == 0.0 and description["rows"] == 1500
    assert description["files"] == ["sample.csv"] and description["snapshot_id"].startswith("sha256:")
    assert (folder / "out" / "pretrained.safetensors").exists()
    assert opened == [] and PrivacyLedger(folder / "ledger.sqlite").charges() == []


@pytest.mark.parametrize("make_bad, message", [
    (lambda private, public: shutil.copy(private, public / "copy.csv.gz"), "same bytes as a file of the private"),
    (lambda private, public: None, "overlaps the private source"),
])
def test_pretraining_never_reads_a_private_source(project, monkeypatch, make_bad, message):
    folder, private, public, opened = project
    make_bad(private, public)
    target = public if "copy" in message or "bytes" in message else private.parent
    with pytest.raises(PrivacyError, match=message):
        run_pretrain(monkeypatch, target, folder / "out")
    assert not (folder / "out" / "pretrained.safetensors").exists() and opened == []


def test_declared_public_data_must_exist_and_undeclared_means_random_start(project, monkeypatch):
    folder, _, public, _ = project
    (public / "sample.csv").unlink()
    with pytest.raises(PrivacyError, match="declares public data .* holds no .csv"):
        run_pretrain(monkeypatch, public, folder / "out")
    params = yaml.safe_load((folder / "params.yaml").read_text())
    del params["datasets"]["churn"]["pretrain"]
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    assert run_pretrain(monkeypatch, public, folder / "out2") == {"pretrained": False,
                                                                "reason": "no public data declared"}


def test_last_layer_fine_tuning_trains_only_the_output_layer(project):
    t = load_settings("churn").train
    model = initial_model(t, 25, 2)
    start = {"weights": {k: v * 0 for k, v in model.state_dict().items()}, "fine_tune": "last_layer"}
    tuned = initial_model(t, 25, 2, start)
    trainable = [name for name, p in tuned.named_parameters() if p.requires_grad]
    assert trainable == ["2.weight", "2.bias"]
    assert all(float(p.abs().sum()) == 0 for p in tuned.parameters())  # started from the given weights


def save_model(folder, n_features, classes):
    from safetensors.torch import save_file

    from privflow.artifacts import write_json

    t = load_settings("churn").train
    model = initial_model(t, n_features, len(classes))
    (folder / "train").mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "train" / "model.safetensors")
    write_json(folder / "train" / "model.json", {"preset": "mlp", "hidden_units": t.hidden_units,
                                                 "features": [f"f{i}" for i in range(n_features)],
                                                 "classes": classes})


def run_explain(monkeypatch, folder, public):
    monkeypatch.setattr(sys, "argv", ["explain", "--dataset", "churn", "--model", str(folder / "train"),
                                      "--public", str(public), "--data", str(folder / "encrypt"),
                                      "--metrics", str(folder / "explain.json")])
    explain.main()
    return json.loads((folder / "explain.json").read_text())


@pytest.mark.parametrize("kind, rows", [("auto", 1500), ("public", 1500), ("synthetic", explain.SYNTHETIC_ROWS)])
def test_explanations_read_no_private_rows_unless_asked(project, monkeypatch, kind, rows):
    folder, _, public, opened = project
    save_model(folder, CHURN_FEATURES, ["yes", "no"])
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["explain"]["data"] = kind
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_explain(monkeypatch, folder, public)
    assert opened == [] and not result["private_rows_read"] and result["rows"] == rows
    assert "no private row was read" in result["statement"]
    assert len(result["importance"]) == CHURN_FEATURES == 24 and all(0 <= r["importance"] <= 1 for r in result["importance"])


def test_explanations_on_the_private_test_split_say_so(project, monkeypatch):
    import torch
    from torch.utils.data import TensorDataset

    folder, _, public, opened = project
    save_model(folder, CHURN_FEATURES, ["yes", "no"])
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["explain"]["data"] = "private_test"
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    (folder / "encrypt").mkdir()
    (folder / "encrypt" / "dataset.json").write_text("{}")
    import privflow.training.io as training_io

    monkeypatch.setattr(training_io, "load_split", lambda vault, description, split, data: opened.append(split)
                        or TensorDataset(torch.rand(40, CHURN_FEATURES), torch.zeros(40, dtype=torch.long)))
    monkeypatch.setattr(explain, "open_vault", lambda: None)
    result = run_explain(monkeypatch, folder, public)
    assert opened == ["test"] and result["private_rows_read"] and result["rows"] == 40
    assert "NOT covered by the differential-privacy guarantee" in result["statement"]


def test_public_explanations_need_declared_public_data(project, monkeypatch):
    folder, _, public, _ = project
    save_model(folder, CHURN_FEATURES, ["yes", "no"])
    params = yaml.safe_load((folder / "params.yaml").read_text())
    del params["datasets"]["churn"]["pretrain"]
    params["explain"]["data"] = "public"
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(PrivacyError, match="declares no public data"):
        run_explain(monkeypatch, folder, public)
