"""The command line's refusals and help: what a user reads, checked as written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from privflow.errors import KeyringError, PrivflowError
from privflow.settings import KEYRING_ENV

PRIVFLOW = Path(sys.executable).parent / "privflow"


def test_a_stage_never_creates_a_keyring(tmp_path, monkeypatch):
    from privflow.artifacts import open_vault

    missing = tmp_path / "gone" / "keyring.json"
    monkeypatch.setenv(KEYRING_ENV, str(missing))
    with pytest.raises(KeyringError, match="no keyring; create one with `privflow keys init`"):
        open_vault()
    assert not missing.exists()


def test_the_first_run_makes_the_keyring_and_a_later_run_never_replaces_a_lost_one(tmp_path, monkeypatch):
    from privflow.flows.cli.common import ensure_keyring

    path = tmp_path / "keys" / "keyring.json"
    monkeypatch.setenv(KEYRING_ENV, str(path))
    ensure_keyring(tmp_path)  # a fresh project: the keyring is made
    assert path.exists()
    path.unlink()
    (tmp_path / "artifacts" / "d" / "ingest").mkdir(parents=True)
    (tmp_path / "artifacts" / "d" / "ingest" / "snapshot.sealed").write_bytes(b"sealed")
    with pytest.raises(PrivflowError, match="restore the keyring from its backup"):
        ensure_keyring(tmp_path)
    assert not path.exists()


def test_predict_names_a_missing_input_file_not_the_source_setting(tmp_path):
    result = subprocess.run([PRIVFLOW, "predict", "new-records.csv"], cwd=tmp_path, capture_output=True, text=True)
    output = " ".join(result.stdout.split())
    assert result.returncode == 2 and "new-records.csv: no such file or folder; give the records to score" in output
    assert "datasets" not in output


def test_join_refuses_a_dataset_that_trains_on_one_node():
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([PRIVFLOW, "join", "-d", "churn"], cwd=root, capture_output=True, text=True)
    output = " ".join(result.stdout.split())
    assert result.returncode == 2 and "dataset churn: train.nodes is 1" in output and "train.rendezvous" in output


@pytest.mark.parametrize("command, says", [
    (["budget", "show"], "default: every one"),
    (["budget", "verify"], "default: every one"),
    (["budget", "audit"], "default: every one"),
    (["report"], "needed when it declares several"),
    (["quarantine"], "needed when it declares several"),
    (["predict"], "needed when it declares several"),
    (["join"], "needed when it declares several"),
])
def test_help_says_what_happens_with_several_datasets(command, says):
    from privflow.flows.cli.common import app

    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and says in " ".join(result.output.split())
    assert "the only one" not in result.output


@pytest.mark.parametrize("group, command, says", [  # each across a line break of the docstring
    ([], "serve", "(Ctrl-C, or SIGTERM as systemd"),
    ([], "join", "train.rendezvous. This host needs"),
    (["budget"], "verify", "kept outside it (sealed beside"),
])
def test_a_command_list_says_each_summary_as_one_paragraph(group, command, says):
    """A wrapped docstring's line breaks are not kept in the list of commands (typer's rich
    mode kept them there: ragged lines); at 200 columns its words run on."""
    import privflow.flows.cli  # noqa: F401  (registers the commands)
    from privflow.flows.cli.common import app

    result = CliRunner().invoke(app, [*group, "--help"], env={"COLUMNS": "200"})
    (line,) = [line for line in result.output.splitlines() if line.strip("│ ").startswith(command + " ")]
    assert result.exit_code == 0 and says in line, line


def test_a_dataset_named_like_the_fingerprints_folder_is_refused_in_words(tmp_path):
    """Its outputs would sit inside artifacts/fingerprints/, the one stage's output for every
    dataset: DVC itself only says that two outputs overlap."""
    import yaml

    env = {**os.environ, KEYRING_ENV: str(tmp_path / "keyring.json"), "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([PRIVFLOW, "init"], cwd=tmp_path, env=env, capture_output=True, check=True)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["datasets"] = {"fingerprints": {"source": "data/source/x.csv", "schema": "schemas/example.yaml"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run([PRIVFLOW, "status"], cwd=tmp_path, env=env, capture_output=True, text=True)
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0 and "a dataset may not be called 'fingerprints'" in output and "rename it" in output
    assert "Traceback" not in output


def test_an_error_is_printed_as_written_even_where_it_looks_like_markup(tmp_path):
    """The example in "needs `allowed:` ... e.g. `allowed: [false, true]`" once printed as
    "e.g. `allowed: `": rich read the brackets as a style tag and dropped them."""
    import yaml

    env = {**os.environ, KEYRING_ENV: str(tmp_path / "keyring.json"), "DVC_NO_ANALYTICS": "1"}
    subprocess.run([PRIVFLOW, "init"], cwd=tmp_path, env=env, capture_output=True, check=True)
    example = tmp_path / "schemas" / "example.yaml"
    target = "left_within_a_year: {type: bool, allowed: [false, true]}"
    assert target in example.read_text()
    example.write_text(example.read_text().replace(target, "left_within_a_year: {type: bool}"))
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["datasets"] = {"payroll": {"source": "data/source/x.csv", "schema": "schemas/example.yaml"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run([PRIVFLOW, "run", "--plan"], cwd=tmp_path, env=env, capture_output=True, text=True)
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2 and "the class labels in order, e.g. `allowed: [false, true]`" in output, output


@pytest.mark.parametrize("text, says", [
    ("datasets:\n  payroll: {source: data/x.csv\n",
     "params.yaml: not valid YAML: expected ',' or '}', but got '<stream end>' at line 3, column 1 (while parsing a "
     "flow mapping at line 2); fix that line"),
    ("datasets:\n\tpayroll: {source: data/x.csv}\n",
     "params.yaml: not valid YAML: found character '\\t' that cannot start any token at line 2, column 1"),
    ("- datasets\n", "params.yaml: its top level is a list, not sections such as `datasets:`"),
])
def test_a_params_file_that_does_not_parse_is_named_with_its_line(tmp_path, text, says):
    """A hand-edited params.yaml is the likeliest YAML a user breaks: named with the line, not
    an "unexpected ParserError, please report it"."""
    env = {**os.environ, KEYRING_ENV: str(tmp_path / "keyring.json"), "DVC_NO_ANALYTICS": "1"}
    subprocess.run([PRIVFLOW, "init"], cwd=tmp_path, env=env, capture_output=True, check=True)
    (tmp_path / "params.yaml").write_text(text)
    commands = [["run", "--plan"], ["status"], ["budget", "show"]] if text.startswith("datasets:\n  ") else [["status"]]
    for command in commands:
        result = subprocess.run([PRIVFLOW, *command], cwd=tmp_path, env=env, capture_output=True, text=True)
        output = " ".join((result.stdout + result.stderr).split())
        assert result.returncode == 2 and output.startswith(f"privflow: {says}"), (command, output)
