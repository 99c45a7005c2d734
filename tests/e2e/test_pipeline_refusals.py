"""Bad input and refusals through the real pipeline: clear message, nothing half-written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from privflow.demo_data import DEFECTS, EXTRA_FIELD_ROW, demo_table
from privflow.stage_settings import LEFT_OUT
from tests.workspace import demo_workspace, stages_ran

pytestmark = pytest.mark.slow


@pytest.fixture
def workspace(tmp_path):
    return demo_workspace(tmp_path)


def test_missing_source_names_the_file_and_writes_nothing(workspace):
    """Refused before Prefect or any stage starts: the fingerprint, taken in privflow's own
    process for the plan, is what says the source cannot be read."""
    workspace.source.unlink()
    result = workspace.run("privflow", "run")
    assert result.returncode == 2
    output = " ".join((result.stdout + result.stderr).split())
    assert (f"privflow: dataset breast_cancer does not run: its source cannot be read: {workspace.source}: "
            "source not found; set the dataset's `source:` under `datasets:` in params.yaml") in output
    assert ("privflow: not run: breast_cancer; fix the source named above, then `privflow run -d breast_cancer`"
            in output)
    assert not (workspace.repo / ".privflow" / "logs").exists()  # no flow run: no run log
    # only the fingerprint, which says why the source cannot be read, and what each stage would
    # read of the settings: no snapshot, no data
    written = sorted(path.relative_to(workspace.repo).as_posix() for path in (workspace.repo / "artifacts").rglob("*"))
    assert written == sorted(["artifacts/fingerprints", "artifacts/fingerprints/breast_cancer.json", *(
        name for stage in LEFT_OUT for name in (f"artifacts/fingerprints/{stage}",
                                                f"artifacts/fingerprints/{stage}/breast_cancer.json"))])
    fingerprint = json.loads((workspace.repo / "artifacts" / "fingerprints" / "breast_cancer.json").read_text())
    assert set(fingerprint) == {"dataset", "unavailable"} and str(workspace.source) in fingerprint["unavailable"]
    assert "Traceback" not in output


# the flow as Prefect's runner or worker starts it: in a process of its own, no `privflow run` watching
AS_SCHEDULED = ("import sys\nfrom privflow.flows.pipeline import pipeline\ntry:\n    pipeline('.')\n"
                "except Exception:\n    sys.exit(1)\n")


def test_a_scheduled_run_that_cannot_start_or_read_its_source_says_why_on_its_service_console(workspace):
    """A nightly run finds params.yaml mis-edited, then the source gone (an unmounted share): its
    service's output gets a line per stage, the failure's own words, what to do and where the
    full output is; never Prefect's frames."""
    params = workspace.repo / "params.yaml"
    good = params.read_text()
    params.write_text(good.replace("datasets:\n", "datasets:\n  extra: [\n", 1))
    result = workspace.run(sys.executable, "-c", AS_SCHEDULED)
    assert result.returncode == 1
    said = result.stdout.splitlines()
    assert len(said) == 2 and said[0].startswith("log: /"), said
    assert said[1].startswith("privflow: params.yaml: not valid YAML: ") and "fix that line" in said[1]
    assert "Finished in state Failed" in result.stderr and "Traceback" not in result.stderr
    params.write_text(good)
    workspace.source.unlink()
    result = workspace.run(sys.executable, "-c", AS_SCHEDULED)
    assert result.returncode == 1
    said = result.stdout.splitlines()
    log = Path(said[0].removeprefix("log: "))  # absolute: a service's working folder is not its reader's
    assert log.parent == (workspace.repo / ".privflow" / "logs").resolve() and log.is_file()
    assert said[1].startswith("fingerprint: ran in ") and said[2].startswith("ingest@breast_cancer: failed in ")
    assert said[3:11] == [f"{stage}@breast_cancer: not run" for stage in (
        "validate", "pretrain", "encrypt", "train", "explain", "evaluate", "compress", "report")]
    assert said[11] == (f"privflow: DatasetError: {workspace.source}: source not found; set the dataset's "
                        "`source:` under `datasets:` in params.yaml")
    assert said[12].startswith("privflow: stage 'ingest@breast_cancer' failed: ")
    assert said[13].startswith(f"next: fix what ingest@breast_cancer said above (full output: {log}); ")
    assert len(said) == 14
    # DVC's stream went to the run's log, once; Prefect says the run failed, without its frames
    assert "Running stage" not in result.stdout + result.stderr
    assert log.read_text().count("Running stage 'ingest@breast_cancer'") == 1
    assert "Finished in state Failed" in result.stderr and "Traceback" not in result.stderr
    status = workspace.run("privflow", "status").stdout  # where a team looks the morning after
    assert f"UTC, failed at ingest@breast_cancer; log .privflow/logs/{log.name}" in " ".join(status.split()), status


def test_wrong_columns_stop_validate_with_file_and_columns(workspace):
    text = workspace.source.read_text().replace("mean_radius", "radius_mean", 1)
    workspace.source.write_text(text)
    result = workspace.run("dvc", "repro")
    assert result.returncode != 0
    assert (f"{workspace.source}: the first line does not name the schema's columns: missing ['mean_radius']; "
            "1 field(s) not declared, at position(s) 3 (not shown: the line may be data)") in result.stderr
    assert "radius_mean" not in result.stderr
    assert (workspace.artifacts("ingest") / "snapshot.sealed").exists()
    assert not workspace.artifacts("validate").exists()  # nothing half-written


def test_empty_source_is_refused_at_ingest(workspace):
    workspace.source.write_text("")
    result = workspace.run("dvc", "repro")
    assert result.returncode != 0
    assert f"{workspace.source}: file is empty" in result.stderr
    assert not workspace.artifacts("ingest").exists()


def test_overspending_run_is_refused_before_decryption(workspace):
    workspace.edit_params(privacy={"epsilon_cap": 3.5})  # one run (3.0) fits, two compose to ~4.2
    workspace.run("dvc", "repro", "train", check=True)
    model = workspace.artifacts("train") / "model.safetensors"
    before = model.read_bytes()
    # Make the split unreadable: if train decrypted anything before charging, it would fail
    # with an integrity error instead of the budget refusal.
    (workspace.artifacts("encrypt") / "train.sealed").write_bytes(b"not decryptable")
    result = workspace.run("dvc", "repro", "--force", "--single-item", "train")
    assert result.returncode != 0
    assert "BudgetExceeded" in result.stderr and "over the cap 3.5" in result.stderr
    assert "IntegrityError" not in result.stderr
    # DVC removes a stage's outputs before running it; the refused run wrote none, and the
    # last good model comes back from the cache.
    assert not model.exists()
    workspace.run("dvc", "checkout", "artifacts/breast_cancer/train", check=True)
    assert model.read_bytes() == before


def test_sigkill_during_training_keeps_the_charge_and_restart_completes(workspace):
    """Charged ahead for the full plan: a killed run is never charged less than the steps it took."""
    import shlex
    import signal
    import subprocess
    import time


    workspace.run("dvc", "repro", "encrypt", "pretrain", check=True)
    workspace.edit_params(train={"epochs": 2000})  # minutes of training: killed long before the end
    command = workspace.stage_command("train")
    process = subprocess.Popen(shlex.split(command), cwd=workspace.repo, env=workspace.env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger = workspace.open_ledger()
    deadline = time.monotonic() + 120
    while not ledger.charges() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    time.sleep(3)  # well into training
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    (charge,) = ledger.charges()
    assert charge.steps == 2000 * 7  # the whole plan: >= any number of steps taken before the kill
    assert not workspace.artifacts("train").exists()  # no partial output
    workspace.edit_params(train={"epochs": 5})
    workspace.run("dvc", "repro", check=True)
    assert len(ledger.charges()) == 2 and ledger.verify() == []
    assert (workspace.reports() / "report.html").exists()


def test_audit_gate_runs_in_the_pipeline_and_reaches_the_report(workspace):
    import json

    workspace.edit_params(train={"audit_canaries": 500})
    workspace.run("dvc", "repro", check=True)
    training = json.loads(workspace.metrics("train").read_text())
    assert training["audit"]["passed"] and training["rows"]["canaries"] == training["audit"]["included"] > 0
    report = (workspace.reports() / "report.html").read_text()
    assert "Passed: 500 synthetic canaries" in report
    assert f"accounted ε = {training['audit']['claimed_epsilon']:.3f} at δ = 1e-05" in report


def test_a_folder_of_gzip_csv_and_parquet_runs_through_dvc(workspace):
    import gzip
    import json

    from tests.unit.test_sources import write_parquet
    from tests.unit.test_validate import csv_bytes

    header, rows = demo_table()
    rows = [r for r in rows if len(r) == len(header)]
    folder = workspace.base / "hospital" / "export-2026-11"
    folder.mkdir()
    (folder / "part-1.csv.gz").write_bytes(gzip.compress(csv_bytes(header, rows[:300])))
    write_parquet(folder / "part-2.parquet", header, rows[300:])
    workspace.edit_dataset(source=str(folder))
    workspace.run("dvc", "repro", "encrypt", check=True)
    manifest = json.loads((workspace.artifacts("ingest") / "manifest.json").read_text())
    assert manifest["files"] == ["part-1.csv.gz", "part-2.parquet"] and manifest["rows"] == 568
    validation = json.loads(workspace.metrics("validate").read_text())
    assert (validation["rows_in"], validation["rows_valid"]) == (568, 561)
    assert stages_ran(workspace.run("dvc", "repro", "encrypt", check=True).stdout) == {"fingerprint"}


def test_quarantine_command_names_file_row_column_and_hides_values(workspace):
    workspace.run("dvc", "repro", "encrypt", check=True)
    shown = workspace.run("privflow", "quarantine", check=True).stdout
    for row, column, _ in DEFECTS:
        row = row if row < EXTRA_FIELD_ROW else row - 1  # this workspace left the extra-field row out
        assert f"{workspace.source}: row {row}, column {column}: failed" in shown
    assert "n/a" not in shown and "unknown" not in shown  # values only on request
    revealed = workspace.run("privflow", "quarantine", "--values", check=True).stdout
    assert "column mean_radius: failed coerce_float (value 'n/a')" in revealed


def _break_schema(workspace, column: str, **spec) -> None:
    import yaml

    path = workspace.repo / "schemas" / "breast_cancer.yaml"
    schema = yaml.safe_load(path.read_text())
    schema["columns"][column] = spec
    path.write_text(yaml.safe_dump(schema, sort_keys=False))


def test_schema_mistake_is_refused_before_prefect_starts_or_a_byte_is_read(workspace):
    _break_schema(workspace, "mean_radius", type="float", min=0)  # no max: cannot scale it
    workspace.source.unlink()  # were the source read first, this would be the error instead
    result = workspace.run("privflow", "run")
    assert result.returncode == 2, result.stdout + result.stderr
    output = " ".join((result.stdout + result.stderr).split())  # rich wraps long lines
    assert "schemas/breast_cancer.yaml: column 'mean_radius' (float): a model feature needs `min:` and `max:`" \
        in output
    assert "Traceback" not in output and str(workspace.source) not in output
    assert not (workspace.repo / "artifacts").exists()
    assert not (workspace.repo / ".privflow" / "prefect" / "prefect.db").exists()  # Prefect never started


def test_ingest_stage_checks_the_schema_before_it_reads_the_source(workspace):
    _break_schema(workspace, "diagnosis", type="int8", allowed=["benign", "malignant"])
    workspace.source.write_text("")  # were the source read first, "file is empty" would be the error
    result = workspace.run("dvc", "repro", "ingest@breast_cancer")
    assert result.returncode != 0
    assert "column 'diagnosis' (int8): allowed value 'benign' is not a number" in result.stderr
    assert "file is empty" not in result.stderr and "Traceback" not in result.stderr
    assert not workspace.artifacts("ingest").exists()


def test_model_that_cannot_fit_the_schema_is_refused_before_any_stage_runs(workspace):
    workspace.edit_dataset(train={"model": "cnn", "input_shape": [1, 5, 5]})  # the schema gives 30 inputs
    result = workspace.run("privflow", "run")
    assert result.returncode == 2
    output = " ".join((result.stdout + result.stderr).split())
    assert "train.input_shape [1, 5, 5] does not fit the 30 model inputs" in output
    assert not (workspace.repo / "artifacts").exists()


def test_unknown_dataset_is_refused_before_prefect_starts(workspace):
    result = workspace.run("privflow", "run", "-d", "nosuch")
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2 and "'nosuch' is not one of them" in output
    assert "Traceback" not in output
    assert not (workspace.repo / ".privflow" / "prefect" / "prefect.db").exists()
