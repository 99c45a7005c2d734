"""What each stage reads of a dataset's settings, as the file through which DVC sees them.

Every stage of a dataset used to declare the dataset's whole params.yaml entry
(`datasets.<name>`) as a params dep, and `train` the `train` and `privacy` sections too: an
edit of any override in the entry (a report title, how much to prune) or the move of the
export re-ran every stage of the dataset. The stages before train wrote the same bytes
(synthetic nonces, a keyed split, seeded pretraining), so DVC stopped there and no ε was
spent since session 26; but a multi-GB export was still read, validated and sealed again for
a new report title. Now the `fingerprint` stage, which runs first on every `dvc repro`,
writes each dataset's effective settings (defaults and overrides resolved) less what a stage
never reads to `artifacts/fingerprints/<stage>/<dataset>.json`, and the stage depends on
that file: an edit re-runs exactly the stages that read what changed. Each stage keeps its
own top-level sections as params, for DVC's words and `dvc params diff`.

Left out, stage by stage, in `LEFT_OUT`: the sections its code never reads (a test reads the
modules each stage loads for them), and what is only checked before a run and shapes no
output: the budget's cap (train refuses a run that would compose past it; raising it re-ran
every training and spent ε again for the same models) and the budget's name, except where
they are shown or charged. Deny-lists, not allow-lists: a section a stage starts to read is
seen until it is listed, so a mistake costs a needless run, never a stale output.

Each version of a file is also kept under its MD5, as dvc.lock records it, in the project's
local state (.privflow/settings-seen/<stage>/<dataset>/): the plan reads the version a stage
last ran with and names the keys that changed ("train.epochs 5 -> 8").
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from privflow.errors import PrivflowError
from privflow.settings import load_settings

AFTER_TRAINING = ("compress", "explain", "report")
CAP = {"privacy": {"epsilon_cap"}}  # checked by train before a run: it admits or refuses, it shapes no model
BUDGET_NAME = {"dataset": {"budget"}}  # which budget train charges: read by train and shown by report


def _sections(*names: str) -> dict:
    return dict.fromkeys(names, True)


# pretraining builds train's model and batches public rows as train does: what else of `train`
# it never reads (privflow.training.public; a test reads that module for these keys)
NOT_READ_BY_PRETRAIN = {"train": {
    "text", "epochs", "physical_batch_size", "learning_rate", "lr_schedule", "max_grad_norm", "target_epsilon",
    "target_delta", "accountant", "sampling", "device", "processes", "nodes", "rendezvous", "noise_seed",
    "checkpoint_every_epochs", "audit_canaries", "audit_confidence"}}

# pydantic's `exclude` for each stage (field names: `validate_` is the `validate` section)
LEFT_OUT: dict[str, dict] = {
    "ingest": {**_sections("train", "privacy", "pretrain", "encrypt", *AFTER_TRAINING), **BUDGET_NAME},
    "validate": {**_sections("train", "privacy", "pretrain", "encrypt", *AFTER_TRAINING), **BUDGET_NAME},
    "pretrain": {**_sections("privacy", "encrypt", *AFTER_TRAINING), **BUDGET_NAME, **NOT_READ_BY_PRETRAIN},
    "encrypt": {**_sections("train", "privacy", "pretrain", *AFTER_TRAINING), **BUDGET_NAME},
    "train": {**_sections("ingest", *AFTER_TRAINING), **CAP},
    # the model card and the split's description say all it needs (classes, the text settings)
    "evaluate": {**_sections("ingest", "validate_", "encrypt", "pretrain", "train", "privacy", *AFTER_TRAINING),
                 **BUDGET_NAME},
    "explain": {**_sections("privacy", "compress", "report"), **BUDGET_NAME},
    "compress": {**_sections("ingest", "validate_", "encrypt", "pretrain", "train", "privacy", "explain", "report"),
                 **BUDGET_NAME},
    "report": _sections("ingest", "validate_", "encrypt", "pretrain", "train", "compress", "explain"),
}
SEEN = Path(".privflow") / "settings-seen"  # under the project: local state, git-ignored
KEPT_VERSIONS = 32  # a dataset's newest versions kept: one a stage ran with, edited since, is among them
SHOWN_CHANGES = 4


def settings_file(fingerprints: Path, stage: str, dataset: str) -> Path:
    return fingerprints / stage / f"{dataset}.json"


def settings_seen(project: Path, stage: str, dataset: str) -> dict:
    """The dataset's settings as `stage` reads them (defaults filled in); settings that do not
    load are marked invalid, and the stage itself says why when it runs. Only what params.yaml
    says goes in, never how it was reached (a path to it), so every process writes the same bytes."""
    return settings_seen_by_each_stage(project, dataset)[stage]


def settings_seen_by_each_stage(project: Path, dataset: str,
                                left_out: dict[str, dict] | None = None) -> dict[str, dict]:
    """`settings_seen` for every stage, from one read of params.yaml (4 ms a read). `left_out`:
    other exclusions than LEFT_OUT's, stage by stage (privflow.upgrades rebuilds a file as an
    earlier release wrote it)."""
    left_out = LEFT_OUT if left_out is None else left_out
    try:
        settings = load_settings(dataset, project / "params.yaml")
    except PrivflowError:
        return {stage: {"dataset": dataset, "invalid": True} for stage in left_out}
    return {stage: {"dataset": dataset, "settings": settings.model_dump(mode="json", by_alias=True, exclude=exclude)}
            for stage, exclude in left_out.items()}


def remember_settings(project: Path, stage: str, dataset: str, path: Path) -> None:
    """Keep the settings file at `path` as it is now, under its MD5 (DVC's digest of it)."""
    body = path.read_bytes()
    folder = project / SEEN / stage / dataset
    kept = folder / f"{hashlib.md5(body).hexdigest()}.json"
    if kept.exists():
        kept.touch()  # seen again: among the newest
        return
    folder.mkdir(parents=True, exist_ok=True)
    kept.write_bytes(body)
    others = sorted((v for v in folder.glob("*.json") if v != kept), key=lambda version: version.stat().st_mtime_ns)
    for old in others[:max(0, len(others) - KEPT_VERSIONS + 1)]:  # mtimes can tie: the new one is never among these
        old.unlink(missing_ok=True)


def settings_changes(project: Path, stage: str, dataset: str, recorded_md5: str | None, now: Path) -> list[str]:
    """The keys of what `stage` reads that differ between the version with `recorded_md5` (the
    one dvc.lock says it last ran with) and the file `now`, each as "key old -> new"; [] when
    that version was not kept here (a fresh clone) or the files cannot be read."""
    try:
        before = json.loads((project / SEEN / stage / dataset / f"{recorded_md5}.json").read_text(encoding="utf-8"))
        after = json.loads(now.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return []
    if "settings" not in before or "settings" not in after:  # settings that did not load: the stage says why
        return []
    # every setting is in the file, defaults resolved: one missing on a side is a release's new or dropped key
    changes = [f"{key} {_shown(old, '(a new setting)')} -> {_shown(new, '(no longer a setting)')}"
               for key, (old, new) in _differences(before["settings"], after["settings"]).items()]
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


def _shown(value, absent: str) -> str:
    return absent if value is _ABSENT else json.dumps(value)
