"""Generative end-to-end test: random schemas, random rows, random defects, each through
ingest -> validate -> encrypt -> train (tiny, 1 epoch) -> compress -> predict, in process.

Every case ends with a model whose predictions lie in the class set, or with a privflow
error that names the file, the column or the setting to change. Never another exception
(what a user would see as a traceback); rows_in = valid + quarantined + unparseable always.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings

from privflow.artifacts import write_json
from privflow.catalog import SERVING_CARD
from privflow.crypto.keys import Keyring
from privflow.crypto.vault import Vault
from privflow.data.dataset import seal_dataset
from privflow.data.snapshot import ingest_snapshot, open_snapshot
from privflow.data.validation import enforce_reject_rate, validate_snapshot
from privflow.errors import PrivflowError
from privflow.modeling.compress import compress_model
from privflow.modeling.predict import score
from privflow.preflight import check_dataset, check_model_config
from privflow.privacy.accounting import plan_dp_sgd
from privflow.settings import load_settings
from privflow.training.charge import privacy_unit_bound
from privflow.training.io import load_split, save_model
from privflow.training.loop import train_private
from tests.conftest import ROOT
from tests.owndata import Case, cases

CASES_PER_RUN = int(os.environ.get("PRIVFLOW_GENERATED_CASES", "30"))
SETTING = re.compile(r"\b(ingest|validate|encrypt|train|privacy|compress)\.[a-z_]+")


def write_project(folder: Path, case: Case) -> tuple[Path, Path, Path]:
    source, schema_file, params_file = folder / "export.csv", folder / "schema.yaml", folder / "params.yaml"
    source.write_bytes(case.csv_bytes())
    schema_file.write_text(yaml.safe_dump(case.schema, sort_keys=False))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"] = {"generated": {"source": str(source), "schema": str(schema_file), **case.overrides}}
    params["compress"]["latency_repeats"] = 1
    params["ingest"]["log"] = str(folder / "ingest-log.jsonl")
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    return source, schema_file, params_file


def run_case(folder: Path, case: Case) -> dict:
    """The stages' own library calls, in dvc.yaml's order; returns what was observed."""
    source, _, params_file = write_project(folder, case)
    run = load_settings("generated", params_file)
    schema = check_dataset(run)
    vault = Vault(Keyring.open(folder / "keyring.json"))
    manifest = ingest_snapshot("generated", run.ingest, vault, folder / "ingest", schema)
    with open_snapshot(vault, folder / "ingest") as (manifest, members):
        outcome = validate_snapshot(members, manifest.source, schema, run.ingest)
    summary = outcome.summary()
    assert summary["rows_in"] == len(case.rows) == manifest.rows
    assert summary["rows_valid"] + summary["rows_quarantined"] + summary["lines_unparseable"] == summary["rows_in"]
    enforce_reject_rate(outcome, run.validate_.max_reject_rate, manifest.source)
    with open_snapshot(vault, folder / "ingest") as (manifest, members):
        description = seal_dataset(members, manifest, schema, outcome, run, vault, folder / "encrypt")
    assert description["classes"] == case.classes
    n_classes, t = len(description["classes"]), run.train
    check_model_config(t, len(description["features"]), n_classes, "dataset generated")
    bound = privacy_unit_bound(description, run)
    train, test = (load_split(vault, description, split, folder / "encrypt") for split in ("train", "test"))
    units = description["splits"]["train"]["units"] if bound > 1 else description["splits"]["train"]["rows"]
    plan = plan_dp_sgd(rows=units, batch_size=t.batch_size, epochs=t.epochs, target_epsilon=t.target_epsilon,
                       target_delta=t.target_delta, accountant=t.accountant)
    result = train_private(train, test, plan, t, n_classes, rows_per_unit=bound)
    card = {"preset": t.model, "hidden_units": t.hidden_units, "input_shape": None, "classes": description["classes"],
            "features": description["features"], "dataset": "generated", "run_id": "r", "snapshot_id": "s"}
    save_model(result.model, folder / "train", card)
    (folder / "compress").mkdir()
    compress_model(result.model, len(card["features"]), run.compress, folder / "compress")
    write_json(folder / "compress" / SERVING_CARD, card)
    scored = score(source, schema, run.ingest, folder / "compress")
    return {"summary": summary, "predicted": {line[1] for line in list(scored.lines())[1:]},
            "scored": len(scored.rows), "not_scored": len({f.row for f in scored.failures})}


def names_what_to_fix(message: str, case: Case, folder: Path) -> bool:
    columns = [*case.schema["columns"], case.schema["target"]]
    return (str(folder) in message or SETTING.search(message) is not None
            or any(f"'{c}'" in message or f" {c}" in message for c in columns))


@pytest.mark.slow
@settings(max_examples=CASES_PER_RUN, deadline=None, derandomize=False, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(case=cases())
def test_every_generated_schema_trains_or_is_refused_with_a_reason(case: Case):
    with tempfile.TemporaryDirectory(prefix="privflow-generated-") as tmp:
        folder = Path(tmp)
        try:
            observed = run_case(folder, case)
        except PrivflowError as error:
            message = str(error)
            event(f"refused: {type(error).__name__}")
            assert names_what_to_fix(message, case, folder), message
            if case.schema_mistake:
                assert case.schema_mistake in message, message
            return
        assert case.schema_mistake is None, f"a broken schema ({case.schema_mistake}) was accepted"
        assert observed["predicted"] <= set(case.classes)
        assert observed["scored"] + observed["not_scored"] == len(case.rows)
        # predict checks each record alone (no uniqueness across rows, the target may be missing)
        assert observed["scored"] >= observed["summary"]["rows_valid"]
        event("trained and scored")
