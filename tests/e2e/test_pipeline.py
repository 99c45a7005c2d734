"""The whole pipeline, for real: a temp git repo, DVC, the Prefect flow, a source with canaries."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess

import pytest
import yaml

from privflow.catalog import snapshot_identity
from privflow.crypto.keys import Keyring
from privflow.crypto.vault import Vault
from privflow.data.snapshot import read_manifest
from privflow.demo_data import demo_table
from privflow.flows.stages import stage_order
from tests.conftest import DEMO_SCHEMA, ROOT
from tests.s3 import bucket_objects, recipe_lines, s3_bucket
from tests.workspace import files_containing, make_workspace, stages_ran

pytestmark = pytest.mark.slow

CANARY_NOTE = "CANARY-NOTE-5e1f0c"       # free text of valid rows (never a feature)
CANARY_VALUE = "13.1415926535"           # a numeric value of a valid row
CANARY_QUARANTINED = "CANARY-BAD-9d2b77"  # a value that fails validation
CANARY_ID = "P-987654"                   # a person id of a valid row
CANARIES = [CANARY_NOTE, CANARY_VALUE, CANARY_QUARANTINED, CANARY_ID]
STAGES = ["fingerprint", "ingest", "validate", "pretrain", "encrypt", "train", "evaluate", "explain", "compress",
          "report"]
BEFORE = [("fingerprint", "ingest"), ("ingest", "validate"), ("validate", "encrypt"), ("encrypt", "train"),
          ("pretrain", "train"), ("train", "evaluate"), ("evaluate", "report"),
          ("train", "compress"), ("train", "explain"), ("compress", "report"), ("explain", "report")]
DATASETS = ["breast_cancer", "churn"]


def canary_dataset():
    header, rows = demo_table()
    header = header + ["notes"]
    rows = [r + [f"{CANARY_NOTE} seen in clinic" if i % 3 == 0 else ""] for i, r in enumerate(rows)]
    rows[100][header.index("mean_radius")] = CANARY_VALUE
    rows[101][header.index("patient_id")] = CANARY_ID
    rows[102][header.index("mean_area")] = CANARY_QUARANTINED
    schema = yaml.safe_load(DEMO_SCHEMA.read_text())
    schema["columns"]["notes"] = {"type": "string", "nullable": True}
    return header, [r for i, r in enumerate(rows) if i != 49], schema  # drop the extra-field row: csv join


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    header, rows, schema = canary_dataset()
    workspace = make_workspace(tmp_path_factory.mktemp("e2e"), header, rows, schema, churn=True)
    result = workspace.run("privflow", "run")
    assert result.returncode == 0, result.stdout + result.stderr
    # what a team does next: commit the lock file, push the data to a (here local) remote
    remote = workspace.base / "remote"
    workspace.run("dvc", "remote", "add", "-d", "shared", str(remote), check=True)
    workspace.run("dvc", "push", check=True)
    workspace.run("git", "add", "-A", check=True)
    workspace.run("git", "commit", "-qm", "pipeline run", check=True)
    return workspace, result


def test_flow_runs_every_stage_and_writes_the_report(pipeline_run):
    workspace, result = pipeline_run
    order = stage_order(workspace.repo)
    # one fingerprint stage for every dataset, then each dataset's own stages
    assert sorted(order) == sorted(["fingerprint", *(f"{s}@{d}" for s in STAGES[1:] for d in DATASETS)])
    for dataset in DATASETS:  # each dataset's stages in DAG order
        named = {stage: stage if stage == "fingerprint" else f"{stage}@{dataset}" for stage in STAGES}
        for first, then in BEFORE:
            assert order.index(named[first]) < order.index(named[then])
    report = (workspace.reports() / "report.html").read_text()
    for section in ("Privacy statement", "Data validation", "Compression", "Privacy budget ledger", "Lineage"):
        assert section in report
    inputs = report.split("<th>model inputs</th>")[1].split("</tr>")[0]  # the features; the notes are no input
    assert "mean_radius" in inputs and "notes" not in inputs and "not read by this model" not in inputs
    training = json.loads(workspace.metrics("train").read_text())
    assert 0 < training["privacy"]["epsilon_spent"] <= 3.0
    assert f"{training['privacy']['epsilon_spent']:.3f}" in report
    # the person sees one line per stage and a summary; DVC's and the stages' own output is in the log
    logs = list((workspace.repo / ".privflow" / "logs").glob("*.log"))
    assert len(logs) == 1 and f"log: .privflow/logs/{logs[0].name}" in result.stdout
    assert "report: wrote" in logs[0].read_text() and "Running stage" in logs[0].read_text()
    assert "Running stage" not in result.stdout + result.stderr
    assert all(f"{stage}: ran in " in result.stdout for stage in order)
    lock = yaml.safe_load((workspace.repo / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == sorted(order)


def test_two_datasets_side_by_side_through_the_same_code(pipeline_run):
    """The demo table and the churn export: different schemas, files, budgets; one pipeline."""

    workspace, result = pipeline_run
    churn = json.loads(workspace.metrics("validate", "churn").read_text())
    assert churn["rows_in"] == 2000 and churn["lines_unparseable"] == 1
    assert churn["failures_by_check"]["age/coerce_int8"] == 1
    assert churn["failures_by_check"]["customer_id/field_uniqueness"] == 2
    manifests = {d: json.loads((workspace.artifacts("ingest", d) / "manifest.json").read_text()) for d in DATASETS}
    assert manifests["churn"]["files"] == ["churn.csv.gz"] and len(manifests["churn"]["columns"]) == 20
    assert manifests["breast_cancer"]["snapshot_id"] != manifests["churn"]["snapshot_id"]
    # plaintext metadata only: a keyed id, counts and names; no size in bytes, which would give
    # whoever knows every other record the length of the last one (its digits, its words)
    assert set(manifests["churn"]) == {"dataset", "snapshot_id", "source", "rows", "columns", "key_id", "files",
                                       "folder", "header_fields", "header_matches_schema"}
    assert all(m["snapshot_id"].startswith("hmac-sha256:") for m in manifests.values())
    ledger = workspace.open_ledger()
    assert [len(ledger.charges(d)) for d in DATASETS] == [1, 1]  # one budget per dataset
    for dataset in DATASETS:
        training = json.loads(workspace.metrics("train", dataset).read_text())
        assert training["privacy"]["epsilon_spent"] <= 3.0
        # the released weights, scored again on the sealed test split, class by class
        evaluation = json.loads(workspace.metrics("evaluate", dataset).read_text())
        assert evaluation["accuracy"] == training["accuracy"]["private"]
        assert evaluation["records"] == training["rows"]["test"] == sum(r["records"] for r in evaluation["classes"])
        constant = evaluation["versus_constant"]
        report = (workspace.reports(dataset) / "report.html").read_text()
        assert f"always answering &#39;{constant['class']}&#39;" in report and "Class by class" in report
        context = json.loads((workspace.reports(dataset) / "report.json").read_text())
        assert context["dataset"]["dataset"] == dataset
        summary = next(line for line in result.stdout.splitlines() if line.startswith(f"{dataset}: ran "))
        assert f"epsilon spent {training['privacy']['epsilon_spent']:.3f}" in summary
        assert f"reports/{dataset}/report.html" in summary
        # a model that does not beat always answering the largest class is named in the summary
        warned = f"{constant['outcome'].upper()} than always answering '{constant['class']}'"
        assert (warned in summary) == (constant["outcome"] in ("no better", "worse")), summary
    # the hospital table's model learned. This small churn export's DP model (and its non-private
    # baseline) answered "no" to nearly everyone in a run measured: accuracy 0.761 against 0.755
    # for always "no", recall 0.02 on the customers who leave; accuracy alone read as learning.
    assert json.loads(workspace.metrics("evaluate").read_text())["versus_constant"]["outcome"] == "better"
    index = (workspace.repo / "reports" / "index.html").read_text()
    assert "breast_cancer/runs/" in index and "churn/runs/" in index


def test_status_shows_each_dataset_up_to_date_with_its_budget(pipeline_run):
    workspace, _ = pipeline_run
    shown = workspace.run("privflow", "status", check=True, columns=200).stdout
    for dataset in DATASETS:
        line = next(line for line in shown.splitlines() if f" {dataset} " in line)
        assert "│ none " in line and "/ 30 (1 run(s))" in line and "(run " in line
    # the run the fixture made: when it started, that it completed, its log
    (last,) = [line for line in shown.splitlines() if line.startswith("last run: ")]
    assert re.fullmatch(r"last run: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, completed; log \.privflow/logs/\S+\.log", last), last


def test_public_pretraining_and_explanations_reach_the_report(pipeline_run):
    """churn declares public data: pretrained on it for free; breast_cancer has none."""
    workspace, _ = pipeline_run
    churn = json.loads(workspace.metrics("train", "churn").read_text())["pretraining"]
    assert churn["pretrained"] and churn["rows"] == 4000 and churn["privacy_spent"] == 0.0
    assert not json.loads(workspace.metrics("train").read_text())["pretraining"]["pretrained"]
    explained = {d: json.loads(workspace.metrics("explain", d).read_text()) for d in DATASETS}
    assert (explained["churn"]["data"], explained["breast_cancer"]["data"]) == ("public", "synthetic")
    assert not any(e["private_rows_read"] for e in explained.values())
    report = (workspace.reports("churn") / "report.html").read_text()
    assert "Public pretraining: the model started from weights trained on 4000 public records" in report
    assert "public data declared for this dataset (4000 rows); no private row was read" in report
    assert "No public pretraining" in (workspace.reports() / "report.html").read_text()


def test_quarantine_counts_add_up(pipeline_run):
    workspace, _ = pipeline_run
    validation = json.loads(workspace.metrics("validate").read_text())
    assert validation["rows_in"] == 568
    assert validation["rows_valid"] + validation["rows_quarantined"] + validation["lines_unparseable"] == 568
    assert validation["failures_by_check"]["mean_area/coerce_float"] == 1


def test_no_plaintext_leaves_memory(pipeline_run):
    """Canaries from the source appear nowhere: workspace, DVC cache, Prefect DB, logs, temp."""
    workspace, result = pipeline_run
    (workspace.base / "logs" / "run.log").write_text(result.stdout + result.stderr)
    roots = [workspace.repo, workspace.base / "remote", workspace.base / "logs",
             workspace.base / "tmp", workspace.base / "dvc-site"]
    assert any((workspace.repo / ".dvc" / "cache" / "runs").rglob("*")), "DVC's run cache is searched"
    assert any((workspace.base / "remote").rglob("*")), "the pushed remote is searched"
    assert any((workspace.repo / ".privflow" / "prefect").rglob("*.db")), "Prefect's database is searched"
    assert files_containing(roots, [c.encode() for c in CANARIES]) == {}
    assert files_containing([workspace.source], [c.encode() for c in CANARIES])  # the canaries are real


def test_second_repro_runs_nothing_and_charges_nothing(pipeline_run):
    """Only the fingerprints are taken again, by their one stage (DVC runs it every time); they
    find the sources unchanged, so ingest and all after it are skipped."""
    workspace, _ = pipeline_run
    result = workspace.run("dvc", "repro", check=True)
    assert stages_ran(result.stdout) == {"fingerprint"}
    assert all(f"Stage 'ingest@{d}' didn't change, skipping" in result.stdout for d in DATASETS)
    assert workspace.out_of_date() == set()
    with sqlite3.connect(workspace.ledger) as db:
        assert db.execute("SELECT COUNT(*) FROM charges").fetchone()[0] == len(DATASETS)


def test_a_dataset_whose_source_is_lost_is_left_out_and_named_and_the_others_run(pipeline_run):
    """Its ingest could only refuse, and a sequential run would stop there: the run says so
    before anything starts, runs the other datasets (up to date here), and exits 2 naming it."""
    workspace, _ = pipeline_run
    source = workspace.base / "bank" / "churn.csv.gz"
    source.rename(source.with_name("moved.csv.gz"))
    try:
        result = workspace.run("privflow", "run", "--yes")
        status = " ".join(workspace.run("privflow", "status", check=True).stdout.split())
    finally:
        source.with_name("moved.csv.gz").rename(source)
    assert f"churn: its source cannot be read: {source}: source not found" in status, status
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, said
    assert said.startswith(f"privflow: dataset churn does not run: its source cannot be read: {source}: source not "
                           "found; set the dataset's `source:`"), said
    assert "stages run: none (all up to date)" in said and "breast_cancer: " in said  # checked, not held up
    assert said.endswith("privflow: not run: churn; fix the source named above, then `privflow run -d churn`")
    assert "churn: " not in said.replace("dataset churn", "").replace("not run: churn;", ""), said
    assert "ingest" not in workspace.run("privflow", "status", check=True).stdout  # back: nothing to run


SCHEDULED_RUN = """
import json
from privflow.flows.pipeline import pipeline
from privflow.flows.stages import DatasetsFailed
try:
    pipeline(".")  # as `privflow serve` runs it: no plan, no refusal before the flow
except DatasetsFailed as failed:
    print(json.dumps({"failed": [failure.stage for failure in failed.failures], "ran": failed.ran}))
"""


def test_a_scheduled_run_that_cannot_read_a_source_still_runs_the_other_datasets(pipeline_run):
    """The flow itself (a schedule's run) stops only the dataset whose stage failed: churn's
    stages come first, yet breast cancer's are all checked and its report published."""
    workspace, _ = pipeline_run
    order = stage_order(workspace.repo)
    assert order.index("ingest@churn") < order.index("ingest@breast_cancer")  # what makes the test tell
    archived = [next((workspace.reports(name) / "runs").glob("*.json")) for name in DATASETS]
    for path in archived:
        os.utime(path, (0, 0))
    dvc_yaml = workspace.repo / "dvc.yaml"
    written = dvc_yaml.read_text()
    dvc_yaml.write_text(written.replace("      - ${privflow_code}/stages/report.py\n", ""))  # as an upgrade finds it
    source = workspace.base / "bank" / "churn.csv.gz"
    source.rename(source.with_name("moved.csv.gz"))
    try:
        result = workspace.run("python", "-c", SCHEDULED_RUN)
        assert dvc_yaml.read_text() == written  # the flow wrote it for the installed privflow
        published = [path.stat().st_mtime > 0 for path in archived]
        # DVC deleted churn's snapshot as its ingest started; the flow put back what dvc.lock records
        snapshot_back = (workspace.artifacts("ingest", "churn") / "manifest.json").exists()
    finally:
        source.with_name("moved.csv.gz").rename(source)
        again = workspace.run("privflow", "run", "--yes")  # the source back: nothing to do, nothing spent
    assert result.returncode == 0 and result.stdout.strip(), result.stdout + result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["failed"] == ["ingest@churn"]
    assert outcome["ran"].pop("fingerprint") is not None  # taken first, for every dataset
    assert outcome["ran"] == {f"{stage}@breast_cancer": False for stage in STAGES[1:]}  # checked: up to date
    assert published == [True, False]  # breast cancer's report was published, churn's not
    assert "source not found" in result.stdout + result.stderr
    assert snapshot_back
    # its service's console: the rewrite, a line per stage, breast cancer's summary, then churn's
    # failure in its own words and what to do
    console = result.stdout.splitlines()
    assert console[1] == "dvc.yaml: code deps of report rewritten for the installed privflow", console
    assert "ingest@churn: failed in " in result.stdout and "train@churn: not run" in console
    assert [line.split(";")[0] for line in console if line.startswith(("breast_cancer:", "churn:"))] == [
        "breast_cancer: ran nothing (up to date)"]
    assert any(line.startswith("privflow: DatasetError: ") and "source not found" in line for line in console)
    assert console[-2].startswith("next: fix what ingest@churn said above (full output: /")
    said = " ".join(again.stdout.split())
    assert again.returncode == 0 and "churn: ran nothing (up to date); epsilon spent 0.000" in said, said + again.stderr
    assert workspace.out_of_date() == set()  # dvc.lock records the fingerprints as they are again


def stages_said(summary: str) -> list[str]:
    """The stages a run's summary line says ran: `churn: ran ingest, validate; epsilon ...`."""
    return summary.split(";")[0].partition(": ran ")[2].split(", ")


def test_an_edit_re_runs_only_the_stages_that_read_it(pipeline_run):
    """A dataset's entry holds settings of every stage; each stage depends only on what it reads
    of them (privflow.stage_settings): a new report title re-runs the report alone (no ingest,
    no training), and so does the data owner raising the budget's cap, which every report shows."""
    workspace, _ = pipeline_run
    original = (workspace.repo / "params.yaml").read_text()
    cap = yaml.safe_load(original)["privacy"]["epsilon_cap"]
    with sqlite3.connect(workspace.ledger) as db:
        charges = db.execute("SELECT COUNT(*) FROM charges").fetchone()[0]
    try:
        workspace.edit_dataset("churn", report={"title": "Churn, for the audit committee <R&D>"})
        workspace.edit_params(privacy={"epsilon_cap": cap + 7})
        plan = " ".join(workspace.run("privflow", "run", "--plan", check=True).stdout.split())
        edited = workspace.run("privflow", "run", "--yes", check=True)
    finally:
        (workspace.repo / "params.yaml").write_text(original)
    # each key with its old and new value, from the version each report last ran with
    assert (f"plan: report@churn runs: its settings changed: privacy.epsilon_cap {cap} -> {cap + 7}, "
            f'report.title "privflow run report" -> "Churn, for the audit committee <R&D>"') in plan, plan
    assert f"plan: report@breast_cancer runs: its settings changed: privacy.epsilon_cap {cap} -> {cap + 7}" in plan
    assert plan.count("plan: ") == 2, plan  # nothing else runs, nothing may
    for dataset in DATASETS:
        ran = next(line for line in edited.stdout.splitlines() if line.startswith(f"{dataset}: ran"))
        assert stages_said(ran) == ["report"] and "epsilon spent 0.000" in ran, ran
        assert f"Cap ε = {cap + 7:g}" in (workspace.reports(dataset) / "report.html").read_text()
    # what the team writes is shown as text, never read as markup (a class or column name as well)
    assert "Churn, for the audit committee &lt;R&amp;D&gt;" in (workspace.reports("churn") / "report.html").read_text()
    # as it was: the reports again, no more; verbose shows DVC's stream live and records it like any run
    verbose = workspace.run("privflow", "run", "--yes", "--verbose", check=True)
    back = verbose.stdout
    ran = next(line for line in back.splitlines() if line.startswith("churn: ran"))
    assert stages_said(ran) == ["report"], ran
    (log,) = [line.removeprefix("log: ") for line in back.splitlines() if line.startswith("log: ")]
    logged = (workspace.repo / log).read_text()
    assert "Stage 'train@churn' didn't change, skipping" in back  # DVC's own line, live
    assert "Stage 'train@churn' didn't change, skipping" in logged
    assert logged.endswith("run ended: completed\n")
    shown = workspace.run("privflow", "status", check=True, columns=200).stdout
    assert f"UTC, completed; log {log}" in shown, shown
    with sqlite3.connect(workspace.ledger) as db:
        assert db.execute("SELECT COUNT(*) FROM charges").fetchone()[0] == charges


def test_the_repository_holds_no_digest_or_size_of_the_private_source(pipeline_run):
    """dvc.lock (committed), DVC's run cache and the pushed remote know each source only by its
    keyed fingerprint: DVC's own MD5 of it, or a SHA-256, would let whoever knows every record
    but one test guesses of that one; its size would give that record's length."""
    workspace, _ = pipeline_run
    sources = [workspace.source, workspace.base / "bank" / "churn.csv.gz"]
    digests = [hashlib.new(kind, path.read_bytes()).hexdigest().encode()
               for path in sources for kind in ("md5", "sha256")]
    roots = [workspace.repo / "dvc.lock", workspace.repo / ".dvc" / "cache", workspace.base / "remote",
             workspace.repo / "metrics", workspace.repo / "reports", workspace.repo / "artifacts"]
    assert files_containing(roots, digests) == {}
    lock = yaml.safe_load((workspace.repo / "dvc.lock").read_text())
    recorded = [dep for stage in lock["stages"].values() for dep in stage.get("deps", [])]
    assert not [dep for dep in recorded if dep["path"].rpartition("/")[2] in {path.name for path in sources}]
    assert not {dep["size"] for dep in recorded} & {path.stat().st_size for path in sources}
    for dataset in DATASETS:
        ingest_deps = [dep["path"] for dep in lock["stages"][f"ingest@{dataset}"]["deps"]]
        assert f"artifacts/fingerprints/{dataset}.json" in ingest_deps
        fingerprint = json.loads((workspace.repo / "artifacts" / "fingerprints" / f"{dataset}.json").read_text())
        manifest = json.loads((workspace.artifacts("ingest", dataset) / "manifest.json").read_text())
        assert fingerprint == {"dataset": dataset, "snapshot_id": manifest["snapshot_id"]}


def assert_restored(workspace, clone) -> None:
    """The clone's pulled snapshot, opened with the keyring, is exactly the source's bytes."""
    manifest = read_manifest(clone / "artifacts" / "breast_cancer" / "ingest")
    vault = Vault(Keyring.open(workspace.base / "keys" / "keyring.json", create=False))
    plaintext = vault.open(clone / "artifacts" / "breast_cancer" / "ingest" / "snapshot.sealed",
                           snapshot_identity(manifest.dataset, manifest.snapshot_id))
    assert vault.snapshot_id("sha256:" + hashlib.sha256(plaintext).hexdigest()) == manifest.snapshot_id
    assert plaintext == workspace.source.read_bytes()


def test_restore_drill_fresh_clone_pull_decrypt(pipeline_run, tmp_path):
    """A fresh clone plus `dvc pull` plus the keyring gives back exactly the ingested bytes."""
    workspace, _ = pipeline_run
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(workspace.repo), str(clone)], check=True)
    subprocess.run(["dvc", "pull", "-q"], cwd=clone, env=workspace.env, check=True)
    assert_restored(workspace, clone)


def test_an_s3_remote_as_infra_recipe_sets_it_holds_ciphertext_only_and_restores(pipeline_run, tmp_path):
    """infra/README.md's S3 recipe, its `dvc remote` lines run as written (the endpoint put in),
    against an S3 API on the loopback (tests/s3.py): the project moves its data from the local
    remote to a bucket, whose objects hold no canary; the keys stay out of git; a colleague's
    clone that adds them pulls every output and opens the snapshot."""
    workspace, _ = pipeline_run
    member, colleague = tmp_path / "member", tmp_path / "colleague"
    keys = {"AWS_ACCESS_KEY_ID": "privflow-test", "AWS_SECRET_ACCESS_KEY": f"secret-{os.urandom(8).hex()}"}

    def run(where, *command: str) -> str:
        done = subprocess.run(command, cwd=where, env={**workspace.env, **keys}, capture_output=True, text=True)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        return done.stdout

    run(tmp_path, "git", "clone", "-q", str(workspace.repo), str(member))
    run(member, "dvc", "pull", "-q")  # from the local remote
    with s3_bucket("privflow-artifacts") as (endpoint, client):
        recipe = recipe_lines(ROOT / "infra" / "README.md", endpoint)
        assert len(recipe) == 4 and any("--local" in line for line in recipe), recipe
        run(member, "dvc", "remote", "remove", "shared")
        for line in recipe:
            run(member, "bash", "-c", line)
        run(member, "dvc", "push", "-q")
        objects = bucket_objects(client, "privflow-artifacts")
        local = workspace.base / "remote"
        pushed = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
        assert {key.removeprefix("my-project/") for key in objects} == pushed  # the same content-addressed files
        for key, body in objects.items():
            (tmp_path / "bucket" / key).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "bucket" / key).write_bytes(body)
        assert files_containing([tmp_path / "bucket"], [c.encode() for c in CANARIES]) == {}
        # the committed config names the bucket and its endpoint; the keys are in config.local, which git ignores
        config = (member / ".dvc" / "config").read_text()
        assert "s3://privflow-artifacts/my-project" in config and keys["AWS_SECRET_ACCESS_KEY"] not in config
        assert keys["AWS_SECRET_ACCESS_KEY"] in (member / ".dvc" / "config.local").read_text()
        run(member, "git", "-c", "user.name=test", "-c", "user.email=test@example.org", "commit", "-qam", "to S3")
        assert ".dvc/config.local" not in run(member, "git", "ls-files", ".dvc").split()
        run(tmp_path, "git", "clone", "-q", str(member), str(colleague))
        for line in recipe:
            if "--local" in line:
                run(colleague, "bash", "-c", line)
        run(colleague, "dvc", "pull", "-q")
    # every output is back but the sources' keyed ids, which are not cached: `fingerprint` writes them each run
    status = json.loads(run(colleague, "dvc", "status", "--json"))
    changes = [change for stage in status.values() for change in stage]
    changed = {(path, state) for change in changes if isinstance(change, dict) for paths in change.values()
               for path, state in paths.items()}
    assert changed and all(state == "deleted" and path.startswith("artifacts/fingerprints") for path, state in changed)
    assert all(isinstance(change, dict) or change == "always changed" for change in changes), status
    assert_restored(workspace, colleague)


def test_rotation_and_forced_reencrypt_leave_dvc_status_clean(pipeline_run):
    workspace, _ = pipeline_run
    lock_before = (workspace.repo / "dvc.lock").read_text()
    rotated = workspace.run("privflow", "keys", "rotate", check=True)
    assert "re-wrapped" in rotated.stdout
    assert workspace.out_of_date() == set()  # the snapshot ids' key is re-wrapped, not changed
    forced = workspace.run("dvc", "repro", "--force", "--single-item", "ingest", "validate", "encrypt", check=True)
    assert forced.stdout.count("Running stage") == 3 * len(DATASETS)
    assert (workspace.repo / "dvc.lock").read_text() == lock_before  # every tracked hash unchanged
    assert workspace.out_of_date() == set()
    assert stages_ran(workspace.run("dvc", "repro", check=True).stdout) == {"fingerprint"}


def test_report_renders_in_chromium_without_errors(pipeline_run):
    """Headless Chromium (Debian's, driven by selenium): no console errors, every section shown."""
    import shutil as _shutil

    if not (_shutil.which("chromium") and _shutil.which("chromedriver")):
        pytest.skip("chromium/chromedriver not installed (`make test` installs them as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from privflow.reporting.render import SECTIONS

    workspace, _ = pipeline_run
    options = webdriver.ChromeOptions()
    options.binary_location = _shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,3600", f"--user-data-dir={workspace.base / 'chromium'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(_shutil.which("chromedriver")))
    try:
        driver.get((workspace.reports() / "report.html").as_uri())
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
        for section in SECTIONS:
            element = driver.find_element(By.ID, section)
            assert element.is_displayed() and element.size["height"] > 40, section
        assert len(driver.find_elements(By.CSS_SELECTOR, "section svg")) == 3  # curves, importance, budget
        screenshots = ROOT / "test-artifacts"
        screenshots.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(screenshots / "report.png"))
    finally:
        driver.quit()


def test_the_report_says_when_the_non_private_baseline_does_not_beat_the_constant_answer(pipeline_run, tmp_path):
    """Then the data may not predict the target at all, and "what DP cost" compares with a model
    that does not predict (a payroll export measured so: baseline 0.546 = always 'niedrig')."""
    from privflow.reporting.render import write_report

    workspace, _ = pipeline_run
    context = json.loads((workspace.reports() / "report.json").read_text())
    constant = context["evaluation"]["versus_constant"]["accuracy"]
    context["evaluation"]["versus_constant"]["outcome"] = "no better"  # then the report says what to try
    for baseline, warned in ((constant, True), (constant + 0.01, False)):
        context["training"]["accuracy"]["non_private_baseline"] = baseline
        write_report(context, tmp_path / str(warned))
        html = (tmp_path / str(warned) / "report.html").read_text()
        markdown = (tmp_path / str(warned) / "report.md").read_text()
        assert ("The non-private baseline does no better than that constant answer either" in html) == warned
        assert ("the non-private baseline does no better than that answer either" in markdown) == warned
        assert ("What to try: first the data" in html) == warned
        assert ("What to try: the non-private baseline beats the constant answer" in html) == (not warned)


def test_the_report_says_when_what_dp_cost_counted_a_persons_records_as_independent(pipeline_run, tmp_path):
    """Train's paired interval counts test records; where a person has several (user-level data)
    it is too narrow, and the report and the model card say so (evaluate's interval is over persons)."""
    from privflow.reporting.model_card import write_model_card
    from privflow.reporting.render import write_report

    workspace, _ = pipeline_run
    context = json.loads((workspace.reports() / "report.json").read_text())
    card = json.loads((workspace.artifacts("train") / "model.json").read_text())
    compression = json.loads(workspace.metrics("compress").read_text())
    for over_persons, widening in ((True, 1.234), (False, None)):
        context["evaluation"]["versus_constant"].update(over_persons=over_persons, widening_over_persons=widening)
        out = tmp_path / str(over_persons)
        write_report(context, out)
        write_model_card(out, card, context["training"], context["evaluation"], compression)
        html, model_card = (out / "report.html").read_text(), (out / "MODEL_CARD.md").read_text()
        assert ("this interval may be too narrow" in html) == over_persons
        assert ("1.23× as wide counted over persons as over records" in html) == over_persons
        assert ('<span class="warn">Counted as if' in html) == over_persons  # widened by a tenth or more: in red
        assert ("the interval may be too narrow (against the constant answer it is 1.23× as wide counted over "
                "persons)." in model_card) == over_persons
        assert "what DP cost in accuracy" in html and "What DP cost" in model_card
    context["evaluation"]["versus_constant"].update(over_persons=True, widening_over_persons=1.02)  # the payroll's
    write_report(context, tmp_path / "slight")
    html = (tmp_path / "slight" / "report.html").read_text()
    assert '<span class="note">Counted as if' in html and "1.02× as wide" in html  # said, not in red
    context["evaluation"]["versus_constant"]["widening_over_persons"] = None  # no spread to compare with: unknown
    write_model_card(tmp_path / "slight", card, context["training"], context["evaluation"], compression)
    model_card = (tmp_path / "slight" / "MODEL_CARD.md").read_text()
    assert "some persons have several: the interval may be too narrow.\n" in model_card


def test_markdown_json_model_card_and_run_index(pipeline_run):
    workspace, _ = pipeline_run
    reports = workspace.reports()
    context = json.loads((reports / "report.json").read_text())
    assert context["training"]["privacy"]["accountant"] == "prv"
    assert "## Privacy statement" in (reports / "report.md").read_text()
    assert context["run_id"] in (reports.parent / "index.html").read_text()
    assert (reports / "runs" / f"{context['run_id']}.html").exists()
    copied = workspace.run("privflow", "report", "--dataset", "breast_cancer", "--out",
                           str(workspace.base / "shared-report"), check=True)
    assert "index.html" in copied.stdout
    assert (workspace.base / "shared-report" / "report.html").read_bytes() == (reports / "report.html").read_bytes()
    card = (workspace.artifacts("compress") / "MODEL_CARD.md").read_text()
    assert "ε = " in card and context["manifest"]["snapshot_id"] in card
    constant = context["evaluation"]["versus_constant"]  # disaggregated, as a model card should be
    assert f"| always answering '{constant['class']}', the most frequent class | {constant['accuracy']:.4f} |" in card
    assert "Balanced accuracy" in card and "Recall by class: malignant " in card
    with sqlite3.connect(next((workspace.repo / ".privflow" / "prefect").rglob("*.db"))) as db:
        keys = {row[0] for row in db.execute("SELECT key FROM artifact")}
    assert {f"privflow-{kind}-{d.replace('_', '-')}" for kind in ("report", "budget") for d in DATASETS} <= keys  # and the canary test searched them


def test_predict_scores_new_records_with_the_exported_model(pipeline_run):
    workspace, _ = pipeline_run
    predictions = workspace.base / "scored" / "predictions.csv"
    predictions.parent.mkdir()
    result = workspace.run("privflow", "predict", str(workspace.source), "--dataset", "breast_cancer",
                           "--out", str(predictions), check=True)
    lines = predictions.read_text().splitlines()
    not_scored = {line.split(": row ")[1].split(",")[0] for line in result.stderr.splitlines() if "not scored:" in line}
    assert lines[0] == "row,prediction,p_malignant,p_benign"
    assert len(lines) - 1 + len(not_scored) == 568 and len(not_scored) >= 4  # every record accounted for
    assert f"not scored: {workspace.source}: row 3, column mean_radius: failed coerce_float" in result.stderr
    assert not files_containing([predictions], [c.encode() for c in CANARIES])  # rows by number, no values
    assert "warning:" not in result.stderr  # this model beat always answering 'benign'


def test_predict_warns_when_the_served_model_did_not_beat_the_constant_answer(pipeline_run):
    """Its answers are then no better than always answering the most frequent class; said beside
    them, for the served model's own figures only (not an earlier model's)."""
    workspace, _ = pipeline_run
    figures = workspace.metrics("evaluate")
    original = figures.read_text()
    evaluation = json.loads(original)
    evaluation["versus_constant"]["outcome"] = "no better"
    try:
        figures.write_text(json.dumps(evaluation))
        said = workspace.run("privflow", "predict", str(workspace.source), "--dataset", "breast_cancer",
                             check=True).stderr
        figures.write_text(json.dumps({**evaluation, "run_id": "an-earlier-model"}))
        earlier = workspace.run("privflow", "predict", str(workspace.source), "--dataset", "breast_cancer",
                                check=True).stderr
    finally:
        figures.write_text(original)
    assert ("warning: on its test split this model did NO BETTER than always answering 'benign' "
            f"({evaluation['versus_constant']['accuracy']:.3f}); see the dataset's report") in said
    assert "warning:" not in earlier


def test_metrics_diff_shows_a_change_of_epsilon(pipeline_run):
    workspace, _ = pipeline_run
    before = json.loads(workspace.metrics("train").read_text())
    workspace.edit_params(train={"target_epsilon": 1.5})
    workspace.run("dvc", "repro", check=True)
    diff = workspace.run("dvc", "metrics", "diff", "--json", check=True)
    changes = json.loads(diff.stdout)["metrics/breast_cancer/train.json"]
    assert changes["privacy.epsilon_spent"]["old"] == pytest.approx(3.0, abs=0.02)
    assert changes["privacy.epsilon_spent"]["new"] == pytest.approx(1.5, abs=0.02)
    assert "diff" in changes["budget.spent_total"]
    # only DP's target changed: the baseline is the earlier run's, and the report says so
    after = json.loads(workspace.metrics("train").read_text())
    assert after["baseline"]["reused_from_an_earlier_run"]
    assert after["accuracy"]["non_private_baseline"] == before["accuracy"]["non_private_baseline"]
    assert "its outcome reused" in (workspace.reports() / "report.html").read_text()


def test_sweep_runs_in_temporary_workspaces_are_charged(pipeline_run):
    """`dvc exp run --temp` trains in a copy of the repo: the charge must reach the same ledger."""

    workspace, _ = pipeline_run
    before = len(workspace.open_ledger().charges())
    workspace.run("dvc", "exp", "run", "--temp", "-S", "train.target_epsilon=0.8", check=True)
    charges = workspace.open_ledger().charges()
    assert len(charges) == before + len(DATASETS) and charges[-1].epsilon <= 0.8
