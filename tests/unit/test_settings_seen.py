"""What train reads of the settings, the file its DVC dep is: what goes in, what stays out."""

from __future__ import annotations

import json
import re

import yaml

from privflow.codedeps import ROOT, stage_code
from privflow.crypto.keys import Keyring
from privflow.data.fingerprint import take_fingerprints
from privflow.training.settings_seen import (KEPT_VERSIONS, NOT_READ_BY_TRAIN, SEEN, remember_settings,
                                             settings_changes, settings_seen_by_train, train_settings_file)
from tests.conftest import ROOT as REPO


def demo_project(tmp_path, **entry):
    """This repository's params.yaml, its breast-cancer entry given `entry`'s keys."""
    tmp_path.mkdir(parents=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"]["breast_cancer"].update(entry)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path


def test_an_edit_train_never_reads_leaves_the_file_as_it_was(tmp_path):
    before = settings_seen_by_train(demo_project(tmp_path / "a"), "breast_cancer")
    for edit in ({"compress": {"prune_amount": 0.05}}, {"report": {"title": "audited"}},
                 {"explain": {"data": "public"}}, {"source": "elsewhere/breast_cancer.csv"},
                 {"privacy": {"epsilon_cap": 9}}):  # the cap admits or refuses a run; it shapes no model
        assert settings_seen_by_train(demo_project(tmp_path / next(iter(edit)), **edit), "breast_cancer") == before
    epochs = settings_seen_by_train(demo_project(tmp_path / "train", train={"epochs": 3}), "breast_cancer")
    noise = settings_seen_by_train(demo_project(tmp_path / "noise", privacy={"secure_noise": True}), "breast_cancer")
    assert epochs["settings"]["train"]["epochs"] == 3 and noise["settings"]["privacy"]["secure_noise"] is True
    assert "epsilon_cap" not in before["settings"]["privacy"]
    assert set(before["settings"]) & NOT_READ_BY_TRAIN == set() and {"train", "privacy", "dataset"} <= set(
        before["settings"])


def test_every_process_writes_the_same_bytes(tmp_path, monkeypatch):
    """The stage takes it from the project's root (`.`), `privflow run` from wherever it was
    given: bytes that differed by that would re-run train."""
    project = demo_project(tmp_path / "p")
    monkeypatch.chdir(project)
    relative = json.dumps(settings_seen_by_train(project.relative_to(project), "breast_cancer"))
    assert json.dumps(settings_seen_by_train(project.resolve(), "breast_cancer")) == relative
    broken = demo_project(tmp_path / "q", train={"epochs": "many"})
    assert settings_seen_by_train(broken, "breast_cancer") == {"dataset": "breast_cancer", "invalid": True}


def test_the_fingerprint_stage_writes_one_a_dataset_and_drops_a_removed_one(tmp_path, monkeypatch):
    project = demo_project(tmp_path / "p")
    monkeypatch.setenv("PRIVFLOW_KEYRING", str(tmp_path / "keyring.json"))
    Keyring.open(tmp_path / "keyring.json")  # as `privflow keys init` does
    folder = project / "artifacts" / "fingerprints"
    take_fingerprints(project, folder)
    names = [p.name for p in sorted(train_settings_file(folder, "x").parent.iterdir())]
    assert names == sorted(f"{name}.json" for name in yaml.safe_load((project / "params.yaml").read_text())["datasets"])
    (train_settings_file(folder, "x")).write_text("{}")  # a dataset since removed
    take_fingerprints(project, folder)
    assert not train_settings_file(folder, "x").exists()


def test_each_version_is_kept_so_a_plan_can_name_the_keys_changed_since_train_ran(tmp_path, monkeypatch):
    import hashlib

    project = demo_project(tmp_path / "p")
    monkeypatch.setenv("PRIVFLOW_KEYRING", str(tmp_path / "keyring.json"))
    Keyring.open(tmp_path / "keyring.json")
    folder = project / "artifacts" / "fingerprints"
    take_fingerprints(project, folder)
    seen = train_settings_file(folder, "breast_cancer")
    ran_with = hashlib.md5(seen.read_bytes()).hexdigest()  # as dvc.lock records train's dep
    before = json.loads(seen.read_text())["settings"]
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["datasets"]["breast_cancer"]["train"] = {**params["datasets"]["breast_cancer"].get("train", {}), "epochs": 3}
    params["train"]["max_grad_norm"] = 1.5
    params["datasets"]["breast_cancer"]["report"] = {"title": "not read by train"}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    take_fingerprints(project, folder)
    assert set(settings_changes(project, "breast_cancer", ran_with, seen)) == {
        f"train.epochs {before['train']['epochs']} -> 3", f"train.max_grad_norm {before['train']['max_grad_norm']} -> 1.5"}
    assert settings_changes(project, "breast_cancer", "0" * 32, seen) == []  # not kept here: the plan says less
    # each version is kept once; the newest KEPT_VERSIONS of a dataset stay
    for epochs in range(KEPT_VERSIONS + 2):
        seen.write_text(json.dumps({"dataset": "breast_cancer", "settings": {"train": {"epochs": epochs}}}))
        remember_settings(project, "breast_cancer", seen)
        remember_settings(project, "breast_cancer", seen)
    kept = list((project / SEEN / "breast_cancer").iterdir())
    assert len(kept) == KEPT_VERSIONS and (project / SEEN / "breast_cancer" / f"{hashlib.md5(seen.read_bytes()).hexdigest()}.json") in kept


def test_train_code_reads_no_section_left_out_of_its_file():
    """The deny-list's guard: a module train loads that read one of the sections left out would
    see changes to it only by chance."""
    pattern = re.compile(r"(?:\bsettings|\bs|load_settings\([^)]*\))\.(" + "|".join(NOT_READ_BY_TRAIN) + r")\b")

    def readers(stage: str) -> dict[str, list[str]]:
        found = {path: pattern.findall((ROOT / path).read_text()) for path in stage_code(stage)}
        return {path: sections for path, sections in found.items() if sections}

    assert readers("train") == {}
    assert readers("compress") == {"stages/compress.py": ["compress"]}  # the guard sees a reader
    assert "explain" in readers("explain")["stages/explain.py"]
