import shutil

import pytest
import yaml

from privflow.errors import PrivflowError
from privflow.settings import load_settings
from tests.conftest import ROOT


@pytest.fixture
def params(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    return path


def edit(path, change):
    document = yaml.safe_load(path.read_text())
    change(document)
    path.write_text(yaml.safe_dump(document))


def test_project_params_load(params):
    settings = load_settings("breast_cancer", params)
    assert settings.train.accountant == "prv"
    with pytest.raises(Exception):
        settings.train.epochs = 1  # frozen


def test_unknown_key_is_an_error_naming_it(params):
    edit(params, lambda d: d["train"].update(epochz=3))
    with pytest.raises(PrivflowError, match=r"train\.epochz: Extra inputs are not permitted"):
        load_settings("breast_cancer", params)


def test_target_above_cap_is_refused(params):
    edit(params, lambda d: d["train"].update(target_epsilon=50.0))
    with pytest.raises(PrivflowError, match="exceeds privacy.epsilon_cap"):
        load_settings("breast_cancer", params)


def test_unknown_accountant_and_missing_file(params, tmp_path):
    edit(params, lambda d: d["train"].update(accountant="moments"))
    with pytest.raises(PrivflowError, match=r"train\.accountant"):
        load_settings("breast_cancer", params)
    with pytest.raises(PrivflowError, match="settings file not found"):
        load_settings("breast_cancer", tmp_path / "nope.yaml")


def test_each_dataset_gets_shared_sections_and_its_own_overrides(params):
    cancer, churn = load_settings("breast_cancer", params), load_settings("churn", params)
    assert (cancer.dataset.name, churn.dataset.name) == ("breast_cancer", "churn")
    assert churn.ingest.source.name == "churn.csv.gz" and churn.validate_.schema_file.name == "churn.yaml"
    assert churn.train.epochs == 10 and cancer.train.epochs == 15  # each its own override
    assert churn.train.max_grad_norm == cancer.train.max_grad_norm == 1.0  # shared
    digits, activity = load_settings("digits", params), load_settings("activity", params)
    assert (digits.train.model, digits.train.input_shape) == ("cnn", (1, 8, 8))
    assert (activity.train.model, activity.train.input_shape) == ("lstm", (32, 1))
    assert churn.privacy == cancer.privacy == digits.privacy


def test_dataset_choice_and_bad_entries_are_named(params):
    with pytest.raises(PrivflowError, match=r"datasets \['breast_cancer', 'churn', 'digits', 'activity', 'feedback'\] are declared; name one"):
        load_settings(None, params)
    with pytest.raises(PrivflowError, match="'payroll' is not one of them"):
        load_settings("payroll", params)
    edit(params, lambda d: d["datasets"]["churn"]["train"].update(epochz=3))
    with pytest.raises(PrivflowError, match=r"dataset 'churn': train\.epochz: Extra inputs are not permitted"):
        load_settings("churn", params)
    edit(params, lambda d: d["datasets"]["churn"].pop("schema"))
    with pytest.raises(PrivflowError, match=r"datasets\.churn\.schema: Field required"):
        load_settings("churn", params)
    edit(params, lambda d: d.pop("datasets"))
    with pytest.raises(PrivflowError, match="no `datasets:` section"):
        load_settings("churn", params)


def test_a_dataset_name_dvc_cannot_take_is_refused_for_every_command(params):
    edit(params, lambda d: d["datasets"].update({"pay roll": d["datasets"]["breast_cancer"]}))
    from privflow.settings import dataset_names

    for call in (lambda: dataset_names(params), lambda: load_settings("breast_cancer", params)):
        with pytest.raises(PrivflowError, match=r"dataset name\(s\) \['pay roll'\].*e\.g\. 'pay_roll'"):
            call()


def test_a_shared_budget_is_declared_per_entry(params):
    edit(params, lambda d: d["datasets"]["breast_cancer"].update({"budget": "hospital_patients"}))
    from privflow.budget import budget_name

    assert budget_name(load_settings("breast_cancer", params)) == "hospital_patients"
    assert budget_name(load_settings("churn", params)) == "churn"
