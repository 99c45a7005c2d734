"""A privflow project's dvc.yaml: the DAG written once, here, with each stage's exact code deps.

`privflow init` writes it into a user's repository; this repository's own dvc.yaml is the same
text (a test compares them). Paths come from the catalog; the code deps from the stages'
import closures (privflow.codedeps), under `${privflow_code}`: the folder privflow's code
lives in, relative to the project when it is inside it (`components` in this checkout, a
venv's site-packages/privflow in a user's project) or absolute.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from privflow import catalog as c
from privflow.codedeps import ROOT, STAGES, stage_code, stage_module
from privflow.data.fingerprint import FINGERPRINTS
from privflow.lockfile import write_atomically
from privflow.stage_settings import LEFT_OUT
from privflow.upgrades import carry_code, carry_over

CODE_VAR = "privflow_code"
GENERATED = "# Written by `privflow init` (privflow.project): regenerate it rather than edit it."
HEADER = f"""{GENERATED}
# The pipeline DAG: the Prefect flow (privflow.flows.pipeline) reads its stage order from this
# file and runs each stage through DVC. Every stage but `fingerprint` runs once per dataset
# declared under `datasets:` in params.yaml (stage names like `train@churn`). Each depends on
# what it reads of its dataset's settings (artifacts/fingerprints/<stage>/<dataset>.json, written
# by `fingerprint` from params.yaml), not on the whole entry: an edit re-runs the stages that
# read it, of that dataset only. A stage's code deps are exactly the files its module imports
# (found from the source): editing one re-runs the stages that load it and no other.
"""

A, M = f"{c.ARTIFACTS}/${{key}}", f"{c.METRICS}/${{key}}"
PUBLIC = f"{c.PUBLIC_DATA}/${{key}}"
FINGERPRINT_FOLDER = f"{c.ARTIFACTS}/{FINGERPRINTS}"
# Each stage's own sections stay params beside its settings file, which holds what it reads of
# them and of the dataset's overrides (DVC says `param compress modified`; `dvc params diff`
# shows them).


def settings_dep(stage: str) -> str:
    """The file of what `stage` reads of its dataset's settings (privflow.stage_settings)."""
    return f"{FINGERPRINT_FOLDER}/{stage}/${{key}}.json"


@dataclass(frozen=True)
class StageSpec:
    """One stage's command-line paths, data deps, params and outputs, before code deps."""

    paths: tuple[tuple[str, str], ...]  # (--option, path) passed to the stage module
    deps: tuple[str, ...]
    params: tuple[str, ...]
    outs: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    plots: tuple[dict, ...] = ()
    comment: str = ""
    always_changed: bool = False  # DVC runs it every time: for a stage that must not declare what it reads
    cache: bool = True  # False: its outs stay out of DVC's cache and remote, and DVC leaves them in place
    per_dataset: bool = True  # a `foreach` over the datasets (`ingest@churn`); else one stage for all


CSV_PARAMS = ("ingest.delimiter", "ingest.encoding", "ingest.decimal")
SPECS = {
    "fingerprint": StageSpec(
        (("out", FINGERPRINT_FOLDER),), (), (), outs=(FINGERPRINT_FOLDER,), always_changed=True, cache=False,
        per_dataset=False,
        comment="each source's keyed id, its only trace in dvc.lock: always run, cheap when nothing changed"),
    "ingest": StageSpec((("fingerprint", f"{FINGERPRINT_FOLDER}/${{key}}.json"), ("out", f"{A}/ingest")),
                        (f"{FINGERPRINT_FOLDER}/${{key}}.json",), ("ingest",), outs=(f"{A}/ingest",)),
    "validate": StageSpec(
        (("snapshot", f"{A}/ingest"), ("out", f"{A}/validate"), ("metrics", f"{M}/{c.VALIDATE_METRICS}")),
        (f"{A}/ingest", "${item.schema}"), (*CSV_PARAMS, "validate"), outs=(f"{A}/validate",),
        metrics=(f"{M}/{c.VALIDATE_METRICS}",)),
    "encrypt": StageSpec(
        (("snapshot", f"{A}/ingest"), ("decisions", f"{A}/validate"), ("out", f"{A}/encrypt")),
        (f"{A}/ingest", f"{A}/validate", "${item.schema}"), (*CSV_PARAMS, "encrypt"), outs=(f"{A}/encrypt",)),
    "pretrain": StageSpec(
        (("public", PUBLIC), ("out", f"{A}/pretrain")), (PUBLIC, "${item.schema}"),
        ("train.model", "train.hidden_units", "train.batch_size", "train.init_seed"), outs=(f"{A}/pretrain",),
        comment="public data only (data/public/<dataset>/, possibly none): never charged"),
    "train": StageSpec(
        (("data", f"{A}/encrypt"), ("pretrained", f"{A}/pretrain"), ("out", f"{A}/train"),
         ("metrics", f"{M}/{c.TRAIN_METRICS}"), ("curve", f"{M}/{c.TRAIN_CURVE}")),
        # not `privacy`: its cap is checked before a run and shapes no model (privflow.stage_settings)
        (f"{A}/encrypt", f"{A}/pretrain"), ("train",), outs=(f"{A}/train",),
        metrics=(f"{M}/{c.TRAIN_METRICS}",), plots=({f"{M}/{c.TRAIN_CURVE}": {"x": "epoch", "y": "epsilon"}},),
        comment="the only stage that spends privacy budget"),
    "evaluate": StageSpec(
        (("model", f"{A}/train"), ("data", f"{A}/encrypt"), ("metrics", f"{M}/{c.EVALUATE_METRICS}")),
        (f"{A}/train", f"{A}/encrypt"), (), metrics=(f"{M}/{c.EVALUATE_METRICS}",),
        comment="the released model on the sealed test split, class by class: never charged"),
    "compress": StageSpec(
        (("model", f"{A}/train"), ("training", f"{M}/{c.TRAIN_METRICS}"), ("evaluation", f"{M}/{c.EVALUATE_METRICS}"),
         ("out", f"{A}/compress"), ("metrics", f"{M}/{c.COMPRESS_METRICS}")),
        (f"{A}/train", f"{M}/{c.TRAIN_METRICS}", f"{M}/{c.EVALUATE_METRICS}"), ("compress",), outs=(f"{A}/compress",),
        metrics=(f"{M}/{c.COMPRESS_METRICS}",),
        comment="post-processing: the DP model only, no private data"),
    "explain": StageSpec(
        (("model", f"{A}/train"), ("public", PUBLIC), ("data", f"{A}/encrypt"),
         ("metrics", f"{M}/{c.EXPLAIN_METRICS}")),
        (f"{A}/train", PUBLIC, f"{A}/encrypt"), ("explain",), metrics=(f"{M}/{c.EXPLAIN_METRICS}",),
        comment="reads private rows only when explain.data is private_test"),
    "report": StageSpec(
        (("manifest", f"{A}/ingest/{c.MANIFEST}"), ("validation", f"{M}/{c.VALIDATE_METRICS}"),
         ("dataset-description", f"{A}/encrypt/{c.DATASET}"), ("model", f"{A}/train/{c.MODEL}"),
         ("training", f"{M}/{c.TRAIN_METRICS}"), ("curve", f"{M}/{c.TRAIN_CURVE}"),
         ("evaluation", f"{M}/{c.EVALUATE_METRICS}"), ("compression", f"{M}/{c.COMPRESS_METRICS}"),
         ("explanation", f"{M}/{c.EXPLAIN_METRICS}"), ("pretraining", f"{A}/pretrain/{c.PRETRAIN_DESCRIPTION}"),
         ("out", f"{c.REPORTS}/${{key}}")),
        (f"{A}/ingest/{c.MANIFEST}", f"{M}/{c.VALIDATE_METRICS}", f"{A}/encrypt/{c.DATASET}", f"{A}/train",
         f"{M}/{c.TRAIN_METRICS}", f"{M}/{c.TRAIN_CURVE}", f"{M}/{c.EVALUATE_METRICS}", f"{M}/{c.COMPRESS_METRICS}",
         f"{M}/{c.EXPLAIN_METRICS}", f"{A}/pretrain/{c.PRETRAIN_DESCRIPTION}"),
        ("report", "privacy"),  # privacy: the cap it shows
        outs=tuple(f"{c.REPORTS}/${{key}}/{name}" for name in c.REPORT_FILES)),
}
assert tuple(SPECS) == STAGES and set(LEFT_OUT) == {stage for stage, spec in SPECS.items() if spec.per_dataset}


def runs_every_time(stage: str) -> bool:
    """Whether dvc.yaml marks the stage (`fingerprint`) always_changed: DVC runs it on
    every repro, so that it ran says nothing; only a change in what it records does."""
    spec = SPECS.get(stage.partition("@")[0])
    return spec is not None and spec.always_changed


def code_root(project: Path) -> str:
    """Where privflow's code is, as dvc.yaml names it: relative to the project if inside it."""
    try:
        return ROOT.relative_to(project.resolve()).as_posix()
    except ValueError:
        return str(ROOT)


def _command(stage: str, spec: StageSpec) -> str:
    options = " ".join(f"--{name} {path}" for name, path in spec.paths)
    return f"python -m {stage_module(stage)} {'--dataset ${key} ' if spec.per_dataset else ''}{options}"


def stage_entry(stage: str) -> dict:
    spec = SPECS[stage]
    settings = [settings_dep(stage)] if spec.per_dataset else []  # in place of the dataset's whole entry
    entry = {"cmd": _command(stage, spec),
             "deps": [*spec.deps, *settings, *(f"${{{CODE_VAR}}}/{path}" for path in stage_code(stage))]}
    if spec.params:
        entry["params"] = list(spec.params)
    if spec.outs:
        entry["outs"] = [out if spec.cache else {out: {"cache": False, "persist": True}} for out in spec.outs]
    if spec.metrics:
        entry["metrics"] = list(spec.metrics)
    if spec.plots:
        entry["plots"] = list(spec.plots)
    if spec.always_changed:
        entry["always_changed"] = True
    return entry


def render_dvc_yaml(code: str) -> str:
    """The whole dvc.yaml, for privflow's code at `code` (see code_root)."""
    lines = [HEADER, "vars:", f"  - {CODE_VAR}: {code}", "", "stages:"]
    for stage in STAGES:
        comment = f"  # {SPECS[stage].comment}" if SPECS[stage].comment else ""
        entry = {"foreach": "${datasets}", "do": stage_entry(stage)} if SPECS[stage].per_dataset else stage_entry(stage)
        body = yaml.safe_dump(entry, sort_keys=False, width=10_000)
        lines.append(f"  {stage}:{comment}")
        lines.extend("    " + line for line in body.splitlines())
        lines.append("")
    return "\n".join(lines)


def declared_code(dvc_yaml: Path) -> tuple[str | None, dict[str, list[str]]]:
    """What a dvc.yaml names as privflow's code: its root and each stage's code deps."""
    document = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}
    root = next((v[CODE_VAR] for v in document.get("vars", []) if isinstance(v, dict) and CODE_VAR in v), None)
    prefix = f"${{{CODE_VAR}}}/"
    entries = {name: stage.get("do", stage) for name, stage in document.get("stages", {}).items()}  # foreach or not
    stages = {name: sorted(d.removeprefix(prefix) for d in entry.get("deps", []) if d.startswith(prefix))
              for name, entry in entries.items()}
    return root, stages


def refresh_dvc_yaml(project: Path) -> list[str]:
    """Rewrite a generated dvc.yaml whose code deps no longer match privflow's imports (an upgrade
    added or dropped a module); returns the stages whose deps changed. A dvc.yaml without the
    `privflow init` line is the user's own and is never touched."""
    path = project / "dvc.yaml"
    if not path.is_file() or not path.read_text(encoding="utf-8").startswith(GENERATED):
        return []
    root, declared = declared_code(path)
    changed = [stage for stage in STAGES if declared.get(stage) != stage_code(stage)]
    current = render_dvc_yaml(root or code_root(project))
    if current != path.read_text(encoding="utf-8"):  # two runs upgrading at once: each its own partial
        write_atomically(path, current)
    carry_over(project)  # after dvc.yaml: what it reads is left to carry, so a cut run is finished later
    carry_code(project, root or code_root(project))
    return changed


def refreshed_note(stages: list[str]) -> str:
    """What a run says after `refresh_dvc_yaml` rewrote these stages' code deps."""
    return f"dvc.yaml: code deps of {', '.join(stages)} rewritten for the installed privflow"


if __name__ == "__main__":  # `python -m privflow.project`: bring this project's dvc.yaml up to date
    print(f"dvc.yaml: code deps of {refresh_dvc_yaml(Path('.')) or 'no stage'} rewritten")
