"""What `train` reads of a dataset's settings, as the file through which DVC sees them.

`train` is the stage that spends privacy budget, so nothing but a change in what it reads
may re-run it. It used to depend on the dataset's whole params.yaml entry (`datasets.<name>`)
with the `train` and `privacy` sections: editing any override in the entry (how much to
prune, what to explain, the report's title) or moving the export to another path re-ran
training on the same data and spent ε again. The stages before it re-run on such an edit
too, but write the same bytes (the vault's nonces are synthetic, the split keyed, pretraining
seeded), so DVC stops there. Now the `fingerprint` stage, which runs first on every
`dvc repro`, writes each dataset's effective settings less the sections train's code never
reads to `artifacts/fingerprints/train/<dataset>.json`, and train depends on that file.

The privacy budget's cap (`privacy.epsilon_cap`) is left out too, and `privacy` is no longer
a params dep of train (only `train` is; the file holds the rest of `privacy`, overrides
included): train reads the cap only to refuse a run that would compose past it, before any
data is read; it shapes no model. While it was seen, a data owner who raised the cap re-ran
every dataset's training and spent ε again for the same models (about 3 a dataset in the
demo). The report, which shows the cap, depends on `privacy` instead.

Each version of the file is also kept, under its MD5 as dvc.lock records it, in the project's
local state (.privflow/train-settings/<dataset>/): the plan reads the version a train last ran
with and names the keys that changed ("train.epochs 5 -> 8") rather than "the file changed".

A deny-list, not an allow-list: a section train starts to read is seen until it is listed
here, so a mistake costs a needless run, never a stale model (a test reads train's code for
the sections listed).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from privflow.errors import PrivflowError
from privflow.settings import load_settings

TRAIN_FOLDER = "train"  # inside the fingerprints' folder: artifacts/fingerprints/train/<dataset>.json
NOT_READ_BY_TRAIN = frozenset({"ingest", "compress", "explain", "report"})
CHECKED_BEFORE_TRAINING = {"privacy": {"epsilon_cap"}}  # read by train to admit or refuse a run, never to train
SETTINGS_LEFT_OUT = {**dict.fromkeys(NOT_READ_BY_TRAIN, True), **CHECKED_BEFORE_TRAINING}  # pydantic's exclude
SEEN = Path(".privflow") / "train-settings"  # under the project: local state, git-ignored
KEPT_VERSIONS = 32  # a dataset's newest versions kept: one a train ran with, edited since, is among them
SHOWN_CHANGES = 4


def train_settings_file(fingerprints: Path, dataset: str) -> Path:
    return fingerprints / TRAIN_FOLDER / f"{dataset}.json"


def settings_seen_by_train(project: Path, dataset: str) -> dict:
    """The dataset's settings as train reads them (defaults filled in); settings that do not load
    are marked invalid, and train itself says why when it runs. Only what params.yaml says goes
    in, never how it was reached (a path to it), so every process writes the same bytes."""
    try:
        settings = load_settings(dataset, project / "params.yaml")
    except PrivflowError:
        return {"dataset": dataset, "invalid": True}
    return {"dataset": dataset, "settings": settings.model_dump(mode="json", by_alias=True,
                                                                exclude=SETTINGS_LEFT_OUT)}


def remember_settings(project: Path, dataset: str, path: Path) -> None:
    """Keep the settings file at `path` as it is now, under its MD5 (DVC's digest of it)."""
    body = path.read_bytes()
    folder = project / SEEN / dataset
    kept = folder / f"{hashlib.md5(body).hexdigest()}.json"
    if kept.exists():
        kept.touch()  # seen again: among the newest
        return
    folder.mkdir(parents=True, exist_ok=True)
    kept.write_bytes(body)
    others = sorted((v for v in folder.glob("*.json") if v != kept), key=lambda version: version.stat().st_mtime_ns)
    for old in others[:max(0, len(others) - KEPT_VERSIONS + 1)]:  # mtimes can tie: the new one is never among these
        old.unlink(missing_ok=True)


def settings_changes(project: Path, dataset: str, recorded_md5: str | None, now: Path) -> list[str]:
    """The keys of what train reads that differ between the version with `recorded_md5` (the one
    dvc.lock says it last ran with) and the file `now`, each as "key old -> new"; [] when that
    version was not kept here (a fresh clone) or the files cannot be read."""
    try:
        before = json.loads((project / SEEN / dataset / f"{recorded_md5}.json").read_text(encoding="utf-8"))
        after = json.loads(now.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return []
    if "settings" not in before or "settings" not in after:  # settings that did not load: train says why
        return []
    changes = [f"{key} {_shown(old)} -> {_shown(new)}" for key, (old, new) in
               _differences(before["settings"], after["settings"]).items()]
    if len(changes) > SHOWN_CHANGES:
        changes = changes[:SHOWN_CHANGES - 1] + [f"{len(changes) - SHOWN_CHANGES + 1} more"]
    return changes


_ABSENT = object()


def _differences(before: dict, after: dict, prefix: str = "") -> dict[str, tuple]:
    """Dotted key -> (old, new) for every leaf that differs; a section on one side only is one key."""
    found = {}
    for key in list(before) + [k for k in after if k not in before]:
        old, new = before.get(key, _ABSENT), after.get(key, _ABSENT)
        if isinstance(old, dict) and isinstance(new, dict):
            found.update(_differences(old, new, f"{prefix}{key}."))
        elif old != new:
            found[f"{prefix}{key}"] = (old, new)
    return found


def _shown(value) -> str:
    return "(unset)" if value is _ABSENT else json.dumps(value)
