"""The `text` preset's settings and its refusals before any data is read: a text-only schema
needs the text preset, the text preset needs exactly one text column (or one named), an
installed encoder; the audit one training process; several nodes a rendezvous. Each refusal
names the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from privflow.preflight import ConfigurationError, check_dataset
from privflow.settings import load_settings
from privflow.errors import PrivflowError
from tests.conftest import ROOT

FEEDBACK = yaml.safe_load((ROOT / "schemas" / "feedback.yaml").read_text())


def _settings(tmp_path: Path, schema: dict, train: dict):
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(schema))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"] = {"notes": {"source": str(tmp_path / "notes.csv"), "schema": str(tmp_path / "schema.yaml"),
                                    "train": train}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return load_settings("notes", tmp_path / "params.yaml")


def test_the_demo_text_dataset_passes_preflight_with_its_settings():
    settings = load_settings("feedback", ROOT / "params.yaml")
    assert settings.train.model == "text" and settings.train.text.fine_tune == "head"
    assert check_dataset(settings).text_columns == ["feedback"]


def test_a_text_only_schema_with_a_tabular_preset_is_refused_naming_the_text_preset(tmp_path):
    with pytest.raises(ConfigurationError, match="only text \\(feedback\\); set train.model: text"):
        check_dataset(_settings(tmp_path, FEEDBACK, {"model": "mlp"}))


@pytest.mark.parametrize("text, schema_columns, says", [
    ({"column": "note"}, None, "train.text.column 'note' is not a `type: text` column"),
    ({}, {"summary": {"type": "text", "max_chars": 50}}, "the schema has 2 (feedback, summary)"),
    ({"encoder": "bert-huge"}, None, "train.text.encoder: pretrained text model 'bert-huge' is not known"),
])
def test_the_text_preset_refuses_a_column_or_encoder_it_cannot_use(tmp_path, text, schema_columns, says):
    schema = {**FEEDBACK, "columns": {**FEEDBACK["columns"], **(schema_columns or {})}}
    with pytest.raises(ConfigurationError) as caught:
        check_dataset(_settings(tmp_path, schema, {"model": "text", "text": text}))
    assert says in str(caught.value) and "dataset notes" in str(caught.value)


def test_the_audit_takes_text_canaries_and_is_refused_before_the_charge_where_it_cannot_run(tmp_path):
    check_dataset(_settings(tmp_path, FEEDBACK, {"model": "text", "audit_canaries": 100}))  # text canaries
    for model in ("text", "mlp"):  # the audit scores canaries drawn in the one training process
        with pytest.raises(PrivflowError, match="train.audit_canaries is 100 with train.processes 2.*"
                                                "set train.audit_canaries: 0"):
            _settings(tmp_path, FEEDBACK, {"model": model, "audit_canaries": 100, "processes": 2})


def test_several_nodes_need_a_rendezvous(tmp_path):
    with pytest.raises(PrivflowError, match="set train.rendezvous to host:port"):
        _settings(tmp_path, FEEDBACK, {"model": "text", "nodes": 2})
    assert _settings(tmp_path, FEEDBACK, {"nodes": 2, "rendezvous": "10.0.0.5:29400"}).train.distributed


def test_a_schema_without_text_or_features_still_says_what_to_declare(tmp_path):
    schema = {**FEEDBACK, "columns": {k: v for k, v in FEEDBACK["columns"].items() if k != "feedback"}}
    with pytest.raises(PrivflowError, match="declare a `type: text` column for the text preset"):
        check_dataset(_settings(tmp_path, schema, {"model": "text"}))


def test_unknown_text_settings_are_refused(tmp_path):
    with pytest.raises(PrivflowError, match="train.text.fine_tun"):
        _settings(tmp_path, FEEDBACK, {"model": "text", "text": {"fine_tun": "head"}})
    with pytest.raises(PrivflowError, match="train.text.fine_tune"):
        _settings(tmp_path, FEEDBACK, {"model": "text", "text": {"fine_tune": "prefix"}})
