import shutil

import pytest
import yaml

from components.errors import PrivflowError
from components.settings import load_settings
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
    settings = load_settings(params)
    assert settings.train.accountant == "prv"
    with pytest.raises(Exception):
        settings.train.epochs = 1  # frozen


def test_unknown_key_is_an_error_naming_it(params):
    edit(params, lambda d: d["train"].update(epochz=3))
    with pytest.raises(PrivflowError, match=r"train\.epochz: Extra inputs are not permitted"):
        load_settings(params)


def test_target_above_cap_is_refused(params):
    edit(params, lambda d: d["train"].update(target_epsilon=50.0))
    with pytest.raises(PrivflowError, match="exceeds privacy.epsilon_cap"):
        load_settings(params)


def test_unknown_accountant_and_missing_file(params, tmp_path):
    edit(params, lambda d: d["train"].update(accountant="moments"))
    with pytest.raises(PrivflowError, match=r"train\.accountant"):
        load_settings(params)
    with pytest.raises(PrivflowError, match="settings file not found"):
        load_settings(tmp_path / "nope.yaml")
