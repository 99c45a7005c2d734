"""Carrying a project's dvc.lock across a change in the shape of dvc.yaml, so that an upgrade of
privflow does not re-run a stage whose inputs did not change: above all `train`, which would
spend privacy budget on the same data.

DVC decides whether a stage is stale by comparing its deps in dvc.yaml with what dvc.lock
recorded of them. Two changes of shape are carried:
- The stages stopped depending on the dataset's whole entry (`datasets.<name>`) and started
  depending on the file of what each reads of it (privflow.stage_settings; train first, then
  every stage). Where dvc.lock's record of the entry is exactly what params.yaml says now
  (DVC would have called it unchanged), the file written from it now stands for the same
  settings, and its hash is recorded in the entry's place.
- The budget's cap left train's file, and `privacy` left train's params (the cap shapes no
  model). A train recorded with the earlier file is carried when that file, written from
  params.yaml now, has the MD5 dvc.lock recorded.
A train is carried only where its recorded `privacy` section is params.yaml's now. Where
anything differs, nothing is carried: the stage runs, as it would have without the upgrade.
A project upgraded from before both changes gets both at once.

Code is carried too, file by file, where a release vouches for it (`EQUIVALENT_CODE`): an
edit that changes no output of a stage that succeeds (the words of an error, the example a
message gives) would otherwise re-run every stage that imports the file, train included,
and spend each dataset's ε again for the same model. A stage recorded with a vouched earlier
version of such a file is recorded with this version instead. An edit that can change any
output (a value, a model, which rows are quarantined) is never vouched for: its stages run.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from privflow.catalog import ARTIFACTS
from privflow.data.fingerprint import FINGERPRINTS, write_fingerprint
from privflow.lockfile import LOCK, write_atomically
from privflow.stage_settings import AFTER_TRAINING, LEFT_OUT, settings_file, settings_seen_by_each_stage

PARAMS = "params.yaml"
# privflow's files whose edits since earlier releases change no stage output, by path in the
# package: (this version's MD5, {an earlier release's MD5: what its edit changed}). A test holds
# each entry to the file as it is, so the next edit of the file must decide again.
EQUIVALENT_CODE: dict[str, tuple[str, dict[str, str]]] = {
    "data/schema.py": ("7bf41c76b5ffc4e095d20d78b98be2e6", {
        "5435e7f1ffe59a05c96590d1bc467caa": "65e79c2: an unparsed date bound is shown in its declared format"}),
    "data/schema_file.py": ("07f0dba853080d1b8cd9fbff473bde29", {
        "5aa3479a23cd6878571f457ab1539d23": "65e79c2: a date feature's example bounds are in its format"}),
    "settings.py": ("8d3e51686e8342c1b4ac61aa56536886", {  # what reads the new key re-runs by its settings file
        "a8efb3774ee3e84cf9a96223b539ce04": "65e79c2: ingest.thousands, default none: any config parses the same"}),
    "catalog.py": ("dd31018f7b482c6fef4d17d6127f54a4", {
        "6394aea625e4a4612ea53473bbdd8d30": "30f6081: the name of the new evaluate stage's metrics file"}),
    # ingest loads stage_settings.py (through data/fingerprint.py), for the source's keyed id
    "stage_settings.py": ("acf865a4b5f26e135f010a03fd993524", {
        "eca0c2c3135fd040fe4c7128fe4435d5": "30f6081: the new evaluate stage's entry; every other stage's file is "
                                            "the same",
        "d460bc843a5878f45c9d2459e7a71b8d": "65e79c2: that, and the plan's words for a release's new key"}),
    # ingest loads it for the source's keyed id, which the lock leaves as it was
    "data/fingerprint.py": ("a2466ed1ebcab546b66902d06854e8aa", {
        "1dd43a5132703a1838d7ca28795c40bc": "ea6a023: takings of the fingerprints wait their turn under a lock; "
                                            "the same files",
        "ca71fff1187e6e705f57a3d996a83f94": "8fb922c: the lock's docstring names the race that remains"}),
    # every stage writes its JSON through write_json: the same bytes, now unnamed until whole
    "artifacts.py": ("96334d4577a80885fc33f37e6fde6f53", {
        "d7d55aeeb827b469d0f982bf40307609": "b5554fe: JSON files written as the sealed ones are (no shared "
                                            "`.partial`); the same bytes"}),
    # every stage loads it first: a refused hand-off is said on stderr; what the stage does is the same
    "stagehost.py": ("211c860605e78e7204a017ca0cb34964", {
        "6b02d8fddd4561e8605c5fc8344b6438": "854d4c6: a stage the host refuses says so on its stderr"}),
    # train's call of paired_gap takes the plain branch: the arithmetic it ran before
    "training/baseline.py": ("ab3c7522e4d9587514c1874cb1655329", {
        "c5875b8395cffa0c505b35c7323f6f63": "30f6081: the paired interval is a function, with evaluate's form over "
                                            "persons"}),
}
PRIVACY = "privacy"  # a params dep of train until the cap left what train is seen to read
TRAIN_WITH_THE_CAP = {"train": dict.fromkeys(("ingest", *AFTER_TRAINING), True)}  # train's file before: cap in it


def carry_over(project: Path) -> list[str]:
    """For each stage in dvc.lock recorded under an earlier shape whose inputs are params.yaml's
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
    carried, seen = [], {}  # seen: each dataset's files, from one read of params.yaml
    for name, entry in (lock.get("stages") or {}).items():
        stage, _, dataset = name.partition("@")
        if stage not in LEFT_OUT or not _unchanged(entry, params, project, stage, dataset):
            continue
        if dataset not in seen:
            seen[dataset] = settings_seen_by_each_stage(project, dataset)
        path = settings_file(project / ARTIFACTS / FINGERPRINTS, stage, dataset)
        write_fingerprint(path, seen[dataset][stage])
        content = path.read_bytes()
        recorded = entry["params"][PARAMS]
        recorded.pop(f"datasets.{dataset}", None)  # its own sections stay: still its params
        if stage == "train":
            recorded.pop(PRIVACY, None)
        dep = path.relative_to(project).as_posix()
        entry["deps"] = [*(d for d in entry.get("deps", []) if d.get("path") != dep),
                         {"path": dep, "hash": "md5", "md5": hashlib.md5(content).hexdigest(), "size": len(content)}]
        carried.append(name)
    if carried:
        write_atomically(lock_path, dumps_yaml(lock))
    return carried


def _left_to_carry(lock_text: str) -> bool:
    """Whether a stage's record in dvc.lock still holds its dataset's entry, or a train's the
    `privacy` section, read from the text: every run asks (`privflow run`, each flow), and
    parsing a five-dataset lock with DVC's YAML costs a tenth of a second, for what is done
    once. The record is a stage (two spaces in) whose params name them (eight spaces in), as
    DVC writes it."""
    return any(block.partition("@")[0] in LEFT_OUT and "@" in block.partition(":")[0]
               and ("\n        datasets." in block or block.startswith("train@") and f"\n        {PRIVACY}:" in block)
               for block in re.split(r"^  (?=\S)", lock_text, flags=re.MULTILINE))


def _unchanged(entry: dict, params: dict, project: Path, stage: str, dataset: str) -> bool:
    """Whether DVC would have called a stage recorded under an earlier shape up to date: its
    dataset's entry as recorded is params.yaml's now (before the settings files), or a train's
    settings file as it was then written is (before the cap left it); and a train's recorded
    `privacy` section is params.yaml's now. Its own sections stay params: DVC compares those."""
    recorded = (entry.get("params") or {}).get(PARAMS)
    if not isinstance(recorded, dict) or (stage == "train" and recorded.get(PRIVACY) != params.get(PRIVACY)):
        return False
    name = f"datasets.{dataset}"
    if name in recorded:
        return recorded[name] == (params.get("datasets") or {}).get(dataset)
    if stage != "train" or PRIVACY not in recorded:
        return False
    path = settings_file(Path(ARTIFACTS) / FINGERPRINTS, stage, dataset).as_posix()
    recorded_file = next((dep.get("md5") for dep in entry.get("deps", []) if dep.get("path") == path), None)
    return recorded_file is not None and recorded_file == hashlib.md5(_train_file_with_the_cap(project, dataset)).hexdigest()


def _train_file_with_the_cap(project: Path, dataset: str) -> bytes:
    """Train's settings file as privflow wrote it before the cap was left out, from params.yaml
    now (the bytes privflow.artifacts.write_json writes)."""
    document = settings_seen_by_each_stage(project, dataset, TRAIN_WITH_THE_CAP)["train"]
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")


def carry_code(project: Path, code_root: str, equivalent: dict = EQUIVALENT_CODE) -> list[str]:
    """Record this version's MD5 for each code dep in dvc.lock that holds a vouched earlier
    version of its file (`code_root`: where dvc.yaml says privflow's code is), provided the
    file there is the version vouched for. Returns the stages whose record changed."""
    lock_path = project / LOCK
    text = lock_path.read_text(encoding="utf-8") if lock_path.is_file() else ""
    if not any(old in text for _, earlier in equivalent.values() for old in earlier):  # most runs: nothing to read
        return []
    from dvc.utils.serialize import dumps_yaml, parse_yaml

    lock = parse_yaml(text, str(lock_path)) or {}
    carried = []
    for name, entry in (lock.get("stages") or {}).items():
        for dep in entry.get("deps", []):
            path = str(dep.get("path", ""))
            relative = path.removeprefix(f"{code_root}/")
            current, earlier = equivalent.get(relative, (None, {}))
            if relative == path or dep.get("md5") not in earlier:  # privflow's own files only
                continue
            content = (project / code_root / relative).read_bytes()
            if hashlib.md5(content).hexdigest() == current:  # an edited install is its own version: runs
                dep.update(md5=current, size=len(content))
                carried.append(name)
    if carried:
        write_atomically(lock_path, dumps_yaml(lock))
    return sorted(set(carried))
