"""What each stage reads of a dataset's settings, the file its DVC dep is: what goes in, what
stays out, and that no stage's code reads what its file leaves out."""

from __future__ import annotations

import hashlib
import json
import re

import yaml

from privflow.codedeps import ROOT, stage_code
from privflow.crypto.keys import Keyring
from privflow.data.fingerprint import take_fingerprints
from privflow.stage_settings import (KEPT_VERSIONS, LEFT_OUT, NOT_READ_BY_PRETRAIN, SEEN, remember_settings,
                                     settings_changes, settings_file, settings_seen)
from tests.conftest import ROOT as REPO

EDITS = {  # an edit of the dataset's entry, and the stages that read it
    "report title": ({"report": {"title": "audited"}}, {"report"}),
    "pruning": ({"compress": {"prune_amount": 0.05}}, {"compress"}),
    "explained on": ({"explain": {"data": "public"}}, {"explain"}),
    "epochs": ({"train": {"epochs": 3}}, {"train", "explain"}),
    "hidden units": ({"train": {"hidden_units": 8}}, {"pretrain", "train", "explain"}),
    "the cap": ({"privacy": {"epsilon_cap": 9}}, {"report"}),  # it admits or refuses a run, it shapes nothing
    "secure noise": ({"privacy": {"secure_noise": True}}, {"train", "report"}),
    "the budget's name": ({"budget": "hospital"}, {"train", "report"}),
    "the export's path": ({"source": "elsewhere/breast_cancer.csv"}, {"ingest", "validate", "encrypt", "pretrain",
                                                                      "explain"}),  # train reads the sealed split
    "the split": ({"encrypt": {"test_fraction": 0.3}}, {"encrypt", "train", "explain"}),
}


def demo_project(tmp_path, **entry):
    """This repository's params.yaml, its breast-cancer entry given `entry`'s keys (a section's
    keys merged into the entry's own overrides)."""
    tmp_path.mkdir(parents=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    own = params["datasets"]["breast_cancer"]
    own.update({key: {**own.get(key, {}), **value} if isinstance(value, dict) else value for key, value in entry.items()})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path


def test_an_edit_changes_the_files_of_exactly_the_stages_that_read_it(tmp_path):
    unedited = demo_project(tmp_path / "before")
    before = {stage: settings_seen(unedited, stage, "breast_cancer") for stage in LEFT_OUT}
    for name, (edit, readers) in EDITS.items():
        project = demo_project(tmp_path / name.replace(" ", "-").replace("'", ""), **edit)
        changed = {stage for stage in LEFT_OUT if settings_seen(project, stage, "breast_cancer") != before[stage]}
        assert changed == readers, name
    assert "epsilon_cap" not in before["train"]["settings"]["privacy"]
    assert before["report"]["settings"]["privacy"]["epsilon_cap"] == 30.0  # the report shows it


def test_every_process_writes_the_same_bytes(tmp_path, monkeypatch):
    """The stage takes it from the project's root (`.`), `privflow run` from wherever it was
    given: bytes that differed by that would re-run the stages."""
    project = demo_project(tmp_path / "p")
    monkeypatch.chdir(project)
    for stage in LEFT_OUT:
        relative = json.dumps(settings_seen(project.relative_to(project), stage, "breast_cancer"))
        assert json.dumps(settings_seen(project.resolve(), stage, "breast_cancer")) == relative
    broken = demo_project(tmp_path / "q", train={"epochs": "many"})
    assert settings_seen(broken, "train", "breast_cancer") == {"dataset": "breast_cancer", "invalid": True}


def test_the_fingerprint_stage_writes_one_a_stage_and_dataset_and_drops_a_removed_one(tmp_path, monkeypatch):
    project = demo_project(tmp_path / "p")
    monkeypatch.setenv("PRIVFLOW_KEYRING", str(tmp_path / "keyring.json"))
    Keyring.open(tmp_path / "keyring.json")  # as `privflow keys init` does
    folder = project / "artifacts" / "fingerprints"
    take_fingerprints(project, folder)
    datasets = sorted(f"{name}.json" for name in yaml.safe_load((project / "params.yaml").read_text())["datasets"])
    for stage in LEFT_OUT:
        assert sorted(p.name for p in settings_file(folder, stage, "x").parent.iterdir()) == datasets
    settings_file(folder, "report", "x").write_text("{}")  # a dataset since removed
    take_fingerprints(project, folder)
    assert not settings_file(folder, "report", "x").exists()


def test_each_version_is_kept_so_a_plan_can_name_the_keys_changed_since_a_stage_ran(tmp_path, monkeypatch):
    project = demo_project(tmp_path / "p")
    monkeypatch.setenv("PRIVFLOW_KEYRING", str(tmp_path / "keyring.json"))
    Keyring.open(tmp_path / "keyring.json")
    folder = project / "artifacts" / "fingerprints"
    take_fingerprints(project, folder)
    seen = settings_file(folder, "train", "breast_cancer")
    ran_with = hashlib.md5(seen.read_bytes()).hexdigest()  # as dvc.lock records train's dep
    before = json.loads(seen.read_text())["settings"]
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["datasets"]["breast_cancer"]["train"] = {**params["datasets"]["breast_cancer"].get("train", {}), "epochs": 3}
    params["train"]["max_grad_norm"] = 1.5
    params["datasets"]["breast_cancer"]["report"] = {"title": "not read by train"}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    take_fingerprints(project, folder)
    assert set(settings_changes(project, "train", "breast_cancer", ran_with, seen)) == {
        f"train.epochs {before['train']['epochs']} -> 3", f"train.max_grad_norm {before['train']['max_grad_norm']} -> 1.5"}
    assert settings_changes(project, "train", "breast_cancer", "0" * 32, seen) == []  # not kept: the plan says less
    # each version is kept once; the newest KEPT_VERSIONS of a stage and dataset stay
    for epochs in range(KEPT_VERSIONS + 2):
        seen.write_text(json.dumps({"dataset": "breast_cancer", "settings": {"train": {"epochs": epochs}}}))
        remember_settings(project, "train", "breast_cancer", seen)
        remember_settings(project, "train", "breast_cancer", seen)
    kept = list((project / SEEN / "train" / "breast_cancer").iterdir())
    assert len(kept) == KEPT_VERSIONS and seen.with_name(f"{hashlib.md5(seen.read_bytes()).hexdigest()}.json").name in {
        k.name for k in kept}


def test_no_stage_reads_a_section_left_out_of_its_file():
    """The deny-lists' guard: a module a stage loads that read a section left out of its file
    would see changes to it only by chance. Two reads are known and harmless: settings.py's
    ledger location (`privacy.ledger`, called where a budget is charged or shown), and ingest's
    check of the model's shape against the schema (preflight: it refuses a run before any byte
    is read, and train checks it again)."""
    known = {("settings.py", "privacy"), ("preflight.py", "train")}

    def readers(stage: str) -> dict[str, list[str]]:
        left_out = [section for section, whole in LEFT_OUT[stage].items() if whole is True]
        pattern = re.compile(r"(?:\bsettings|\bs|load_settings\([^)]*\))\.(" + "|".join(left_out) + r")\b")
        found = {path: [s for s in pattern.findall((ROOT / path).read_text()) if (path, s) not in known]
                 for path in stage_code(stage)}
        return {path: sections for path, sections in found.items() if sections}

    assert all(readers(stage) == {} for stage in LEFT_OUT), {stage: readers(stage) for stage in LEFT_OUT}
    # the guard sees a reader: with `compress` left out, compress's own stage would be found
    pattern = re.compile(r"(?:\bsettings|\bs|load_settings\([^)]*\))\.(compress)\b")
    assert pattern.findall((ROOT / "stages" / "compress.py").read_text())
    # pretraining reads these keys of `train` and no other
    public = (ROOT / "training" / "public.py").read_text()
    assert set(re.findall(r"\bt\.(\w+)", public)) == {"model", "hidden_units", "input_shape", "init_seed", "batch_size"}
    assert not set(re.findall(r"\bt\.(\w+)", public)) & NOT_READ_BY_PRETRAIN["train"]


def test_a_setting_a_release_adds_or_drops_is_named_as_such(tmp_path):
    """Every setting is in the file, defaults resolved: a key one side lacks came or went with a
    release (an upgrade's new `ingest.thousands`), not with an edit of params.yaml."""
    from privflow.stage_settings import SEEN

    kept = tmp_path / SEEN / "validate" / "d" / f"{'a' * 32}.json"
    kept.parent.mkdir(parents=True)
    kept.write_text(json.dumps({"settings": {"ingest": {"decimal": ".", "old_key": 1}}}))
    now = tmp_path / "now.json"
    now.write_text(json.dumps({"settings": {"ingest": {"decimal": ".", "thousands": None}}}))
    assert settings_changes(tmp_path, "validate", "d", "a" * 32, now) == [
        "ingest.old_key 1 -> (no longer a setting)", "ingest.thousands (a new setting) -> null"]
