"""Carrying a project's dvc.lock across a change in the shape of dvc.yaml, so that an upgrade of
privflow does not re-run a stage whose inputs did not change: above all `train`, which would
spend privacy budget on the same data.

DVC decides whether a stage is stale by comparing its deps in dvc.yaml with what dvc.lock
recorded of them. When `train` stopped depending on the dataset's whole entry
(`datasets.<name>`) and started depending on the file of what it reads of it
(privflow.training.settings_seen), every train in every project would have looked stale once.
Where dvc.lock's record of the entry is exactly what params.yaml says now (DVC would have
called it unchanged), the file written from it now stands for the same settings, and its hash
is recorded in its place. Where they differ, nothing is carried over: train runs, as it would
have without the upgrade.

The second change of shape: the budget's cap left the file, and `privacy` left train's params
(the cap shapes no model; settings_seen says why). A train recorded with the earlier file is
carried over when that file, written from params.yaml now, has the MD5 dvc.lock recorded and
its recorded `privacy` section is params.yaml's now: the new file's MD5 is recorded in its
place. A project upgraded from before either change gets both at once.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from privflow.catalog import ARTIFACTS
from privflow.data.fingerprint import FINGERPRINTS, write_fingerprint
from privflow.lockfile import LOCK, write_atomically
from privflow.errors import PrivflowError
from privflow.settings import load_settings
from privflow.training.settings_seen import NOT_READ_BY_TRAIN, settings_seen_by_train, train_settings_file

PARAMS = "params.yaml"
PRIVACY = "privacy"  # a params dep of train until the cap left what train is seen to read


def carry_train_over(project: Path) -> list[str]:
    """For each train in dvc.lock recorded under an earlier shape whose inputs are params.yaml's
    now: write the settings file it depends on from now on and record its hash in place of the
    old record. Returns the stages carried over (the others run at the next `privflow run`, as
    they were due to). It reads dvc.lock itself for what is left to carry, so a run killed
    between the rewrite of dvc.yaml and this one is finished by the next."""
    lock_path = project / LOCK
    text = lock_path.read_text(encoding="utf-8") if lock_path.is_file() else ""
    if not _left_to_carry(text):
        return []
    # DVC's own YAML (1.2): it wrote dvc.lock and compares params.yaml with it so (`1e-05` is a
    # number to it, a string to PyYAML)
    from dvc.utils.serialize import dumps_yaml, parse_yaml

    lock = parse_yaml(text, str(lock_path)) or {}
    params = parse_yaml((project / PARAMS).read_text(encoding="utf-8"), PARAMS) or {}
    carried = []
    for stage, entry in (lock.get("stages") or {}).items():
        dataset = stage.partition("@")[2]
        if not stage.startswith("train@") or not _unchanged(entry, params, project, dataset):
            continue
        path = train_settings_file(project / ARTIFACTS / FINGERPRINTS, dataset)
        write_fingerprint(path, settings_seen_by_train(project, dataset))
        content = path.read_bytes()
        recorded = entry["params"][PARAMS]
        recorded.pop(f"datasets.{dataset}", None)  # `train` stays: still its params
        recorded.pop(PRIVACY, None)
        name = path.relative_to(project).as_posix()
        entry["deps"] = [*(dep for dep in entry.get("deps", []) if dep.get("path") != name),
                         {"path": name, "hash": "md5", "md5": hashlib.md5(content).hexdigest(), "size": len(content)}]
        carried.append(stage)
    if carried:
        write_atomically(lock_path, dumps_yaml(lock))
    return carried


def _left_to_carry(lock_text: str) -> bool:
    """Whether a train's record in dvc.lock still holds its dataset's entry or the `privacy`
    section, read from the text: every run asks (`privflow run`, each flow), and parsing a
    five-dataset lock with DVC's YAML costs a tenth of a second, for what is done once. The
    record is a stage (two spaces in) whose params name them (eight spaces in), as DVC writes it."""
    return any(block.startswith("train@") and ("\n        datasets." in block or f"\n        {PRIVACY}:" in block)
               for block in re.split(r"^  (?=\S)", lock_text, flags=re.MULTILINE))


def _unchanged(entry: dict, params: dict, project: Path, dataset: str) -> bool:
    """Whether DVC would have called a train recorded under an earlier shape up to date: its
    recorded `privacy` section is params.yaml's now, and so is its dataset's entry (before the
    settings file) or the settings file as it was then written (before the cap left it).
    Its `train` section stays a param of train: DVC compares that itself."""
    recorded = (entry.get("params") or {}).get(PARAMS)
    if not isinstance(recorded, dict) or recorded.get(PRIVACY) != params.get(PRIVACY):
        return False
    name = f"datasets.{dataset}"
    if name in recorded:
        return recorded[name] == (params.get("datasets") or {}).get(dataset)
    path = train_settings_file(Path(ARTIFACTS) / FINGERPRINTS, dataset).as_posix()
    recorded_file = next((dep.get("md5") for dep in entry.get("deps", []) if dep.get("path") == path), None)
    return recorded_file is not None and recorded_file == hashlib.md5(_file_with_the_cap(project, dataset)).hexdigest()


def _file_with_the_cap(project: Path, dataset: str) -> bytes:
    """The settings file as privflow wrote it before the cap was left out, from params.yaml now
    (the bytes privflow.artifacts.write_json writes)."""
    try:
        settings = load_settings(dataset, project / PARAMS)
    except PrivflowError:
        document = {"dataset": dataset, "invalid": True}
    else:
        document = {"dataset": dataset, "settings": settings.model_dump(mode="json", by_alias=True,
                                                                        exclude=set(NOT_READ_BY_TRAIN))}
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")
