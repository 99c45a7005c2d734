"""An upgrade that changes the stages' deps (the dataset's entry → the file of what each reads
of it; then the cap and `privacy` left train's) keeps an up-to-date stage up to date in DVC's
own eyes, and leaves one whose settings changed to run: real DVC."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from privflow.data.fingerprint import write_fingerprint
from privflow.stage_settings import settings_file, settings_seen
from privflow.upgrades import carry_code, carry_over
from tests.repos import DVC, init_repo

pytestmark = pytest.mark.slow

TRAIN = "python -c \"import pathlib; pathlib.Path('out', '${key}').mkdir(parents=True, exist_ok=True); " \
        "pathlib.Path('out', '${key}', 'model').write_text('m')\""
REPORT = TRAIN.replace("'out'", "'reports'").replace("'model'", "'report.html'")
BEFORE = f"""stages:
  train:
    foreach: ${{datasets}}
    do:
      cmd: {TRAIN}
      params: ['datasets.${{key}}', train, privacy]
      outs: ['out/${{key}}']
  report:
    foreach: ${{datasets}}
    do:
      cmd: {REPORT}
      params: ['datasets.${{key}}', report]
      outs: ['reports/${{key}}']
"""
AFTER = f"""stages:
  train:
    foreach: ${{datasets}}
    do:
      cmd: {TRAIN}
      deps: ['artifacts/fingerprints/train/${{key}}.json']
      params: [train]
      outs: ['out/${{key}}']
  report:
    foreach: ${{datasets}}
    do:
      cmd: {REPORT}
      deps: ['artifacts/fingerprints/report/${{key}}.json']
      params: [report]
      outs: ['reports/${{key}}']
"""
TRAIN_AFTER = AFTER.split("  report:")[0]
WITH_PRIVACY = TRAIN_AFTER.replace("params: [train]", "params: [train, privacy]")  # the shape before the cap left
# `1.0e-05`: DVC's YAML writes it to dvc.lock as `1e-05`, which PyYAML reads as a string
PARAMS = """datasets:
  a: {source: a.csv, schema: s.yaml}
  b: {source: b.csv, schema: s.yaml}
train: {epochs: 3, target_delta: 1.0e-05}
privacy: {epsilon_cap: 3.0}
report: {title: t}
"""


def status(root: Path) -> dict:
    return json.loads(subprocess.run([DVC, "status", "--json"], cwd=root, check=True, capture_output=True,
                                     text=True).stdout or "{}")


def test_stages_up_to_date_stay_so_and_those_whose_entry_changed_run(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    (root / "params.yaml").write_text(PARAMS)
    (root / "dvc.yaml").write_text(BEFORE)
    init_repo(root)
    subprocess.run([DVC, "repro", "-q"], cwd=root, check=True)
    assert status(root) == {}
    (root / "params.yaml").write_text(PARAMS.replace("b: {source: b.csv,", "b: {budget: other, source: b.csv,"))
    (root / "dvc.yaml").write_text(AFTER)  # the upgrade's new dvc.yaml; b's entry was edited before it
    assert sorted(carry_over(root)) == ["report@a", "train@a"]
    assert set(status(root)) == {"train@b", "report@b"}  # a: carried, up to date; b: its entry changed, it runs
    assert carry_over(root) == []  # done once
    folder = root / "artifacts" / "fingerprints"  # what the fingerprint stage writes first in a real project
    for stage in ("train", "report"):
        write_fingerprint(settings_file(folder, stage, "b"), settings_seen(root, stage, "b"))
    subprocess.run([DVC, "repro", "-q"], cwd=root, check=True)
    assert status(root) == {}


def test_a_train_recorded_with_the_cap_is_carried_and_a_new_cap_then_re_runs_no_training(tmp_path):
    """The budget's cap left the settings file and `privacy` left train's params: an up-to-date
    train stays so; one whose settings changed runs; after it, raising the cap re-runs none."""
    import yaml

    from privflow.upgrades import _train_file_with_the_cap
    from tests.conftest import ROOT

    root = tmp_path / "p"
    root.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"] = {name: params["datasets"]["breast_cancer"] for name in ("a", "b")}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "dvc.yaml").write_text(WITH_PRIVACY)
    folder = root / "artifacts" / "fingerprints"
    for dataset in ("a", "b"):  # as the fingerprint stage of the release before wrote them
        settings_file(folder, "train", dataset).parent.mkdir(parents=True, exist_ok=True)
        settings_file(folder, "train", dataset).write_bytes(_train_file_with_the_cap(root, dataset))
    init_repo(root)
    subprocess.run([DVC, "repro", "-q"], cwd=root, check=True)
    assert status(root) == {}
    params["datasets"]["b"] = {**params["datasets"]["b"], "train": {"epochs": 4}}  # edited before the upgrade
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "dvc.yaml").write_text(TRAIN_AFTER)

    def take_fingerprints() -> None:  # what the fingerprint stage writes first in a real project
        for dataset in ("a", "b"):
            write_fingerprint(settings_file(folder, "train", dataset), settings_seen(root, "train", dataset))

    assert carry_over(root) == ["train@a"]
    take_fingerprints()
    assert set(status(root)) == {"train@b"}  # a: carried, up to date; b: its settings changed, it runs
    subprocess.run([DVC, "repro", "-q"], cwd=root, check=True)
    assert status(root) == {} and carry_over(root) == []
    params["privacy"]["epsilon_cap"] = 2 * params["privacy"]["epsilon_cap"]  # the data owner raises the cap
    params["datasets"]["b"]["privacy"] = {"secure_noise": True}  # what train reads of privacy is still seen
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    take_fingerprints()
    assert set(status(root)) == {"train@b"}


CODE_STAGES = """stages:
  train:
    cmd: python -c "import pathlib; pathlib.Path('model').write_text('m')"
    deps: [code/pkg/data/schema.py, code/pkg/errors.py]
    outs: [model]
  report:
    cmd: python -c "import pathlib; pathlib.Path('report').write_text('r')"
    deps: [model, code/pkg/errors.py]
    outs: [report]
"""


def md5(data: bytes) -> str:
    import hashlib

    return hashlib.md5(data).hexdigest()


def test_an_edit_vouched_to_change_no_output_re_runs_no_stage_and_any_other_edit_does(tmp_path):
    """A release that only rewords an error in a file train imports: the stages recorded with the
    earlier file are recorded with the new one (no training, no ε); an edit it does not vouch for,
    or an installed file that is neither version, leaves the stage to run."""
    root = tmp_path / "p"
    (root / "code" / "pkg" / "data").mkdir(parents=True)
    schema, errors = root / "code" / "pkg" / "data" / "schema.py", root / "code" / "pkg" / "errors.py"
    before = b"def check(v):\n    raise ValueError('write it as 2024-01-31')\n"
    after = before.replace(b"2024-01-31", b"31.01.2024")
    schema.write_bytes(before)
    errors.write_bytes(b"class Refused(Exception): pass\n")
    (root / "dvc.yaml").write_text(CODE_STAGES)
    init_repo(root)
    subprocess.run([DVC, "repro", "-q"], cwd=root, check=True)
    vouched = {"data/schema.py": (md5(after), {md5(before): "an error's words"})}
    assert carry_code(root, "code/pkg", vouched) == []  # nothing recorded with an earlier version yet
    schema.write_bytes(after)  # the upgrade
    assert set(status(root)) == {"train"}
    assert carry_code(root, "code/pkg", vouched) == ["train"]
    assert status(root) == {} and carry_code(root, "code/pkg", vouched) == []  # done once

    schema.write_bytes(after + b"# edited by hand\n")  # an installed file that is not the vouched version
    subprocess.run([DVC, "repro", "-q"], cwd=root, check=True)
    recorded = (root / "dvc.lock").read_text()
    schema.write_bytes(after)
    assert carry_code(root, "code/pkg", {"data/schema.py": (md5(b"other"), {md5(after + b"# edited by hand\n"): ""})}) \
        == [] and (root / "dvc.lock").read_text() == recorded  # the file now is not the version vouched for
    assert carry_code(root, "code/pkg", vouched) == [] and set(status(root)) == {"train"}  # not an earlier version
    subprocess.run([DVC, "repro", "-q"], cwd=root, check=True)
    errors.write_bytes(b"class Refused(Exception): pass  # changed\n")  # not vouched for: both stages run
    assert carry_code(root, "code/pkg", vouched) == [] and set(status(root)) == {"train", "report"}
