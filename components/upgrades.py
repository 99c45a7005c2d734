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
have without the upgrade. Its `train` and `privacy` sections stay params of train (DVC still
says which changed, and `dvc params diff` still shows them).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from privflow.catalog import ARTIFACTS
from privflow.data.fingerprint import FINGERPRINTS, write_fingerprint
from privflow.lockfile import LOCK, write_atomically
from privflow.training.settings_seen import settings_seen_by_train, train_settings_file

PARAMS = "params.yaml"


def carry_train_over(project: Path) -> list[str]:
    """For each train in dvc.lock whose recorded dataset entry is params.yaml's now: write the
    settings file it depends on from now on and record its hash in place of the entry. Returns
    the stages carried over (the others run at the next `privflow run`, as they were due to).
    It reads dvc.lock itself for what is left to carry, so a run killed between the rewrite of
    dvc.yaml and this one is finished by the next."""
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
        if not stage.startswith("train@") or not _unchanged(entry, params, dataset):
            continue
        path = train_settings_file(project / ARTIFACTS / FINGERPRINTS, dataset)
        write_fingerprint(path, settings_seen_by_train(project, dataset))
        content = path.read_bytes()
        del entry["params"][PARAMS][f"datasets.{dataset}"]  # `train` and `privacy` stay: still its params
        entry["deps"] = [*entry.get("deps", []), {"path": path.relative_to(project).as_posix(), "hash": "md5",
                                                  "md5": hashlib.md5(content).hexdigest(), "size": len(content)}]
        carried.append(stage)
    if carried:
        write_atomically(lock_path, dumps_yaml(lock))
    return carried


def _left_to_carry(lock_text: str) -> bool:
    """Whether a train's record in dvc.lock still holds its dataset's entry, read from the text:
    every run asks (`privflow run`, each flow), and parsing a five-dataset lock with DVC's YAML
    costs a tenth of a second, for what is done once. The record is a stage (two spaces in)
    whose params name `datasets.<name>` (eight spaces in), as DVC writes it."""
    return any(block.startswith("train@") and "\n        datasets." in block
               for block in re.split(r"^  (?=\S)", lock_text, flags=re.MULTILINE))


def _unchanged(entry: dict, params: dict, dataset: str) -> bool:
    """Whether dvc.lock recorded a train's dataset entry, and recorded it as params.yaml says it
    now (its `train` and `privacy` sections stay params of train: DVC compares those itself)."""
    recorded = (entry.get("params") or {}).get(PARAMS)
    name = f"datasets.{dataset}"
    return (isinstance(recorded, dict) and name in recorded
            and recorded[name] == (params.get("datasets") or {}).get(dataset))
