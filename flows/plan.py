"""What a run will do, before it does anything: which stages DVC finds stale and why, and what
each `train` among them will spend of its dataset's privacy budget, from the accountant.

DVC reports a stage stale when its own deps, params, command or outputs changed; a stage
downstream of a stale one runs only if that one's outputs change (identical bytes re-use
the lock), so it is listed as "may run" and its spend as an upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from privflow.catalog import DATASET
from privflow.data.fingerprint import fingerprint_file, is_fingerprint, stage_of_settings, unreadable
from privflow.errors import PrivflowError
from privflow.flows.stages import FINGERPRINT_STAGE, Dag, dataset_of, read_dag
from privflow.project import SPECS, declared_code
from privflow.stage_settings import settings_changes


@dataclass(frozen=True)
class PlannedStage:
    stage: str  # e.g. train@churn
    why: str  # what changed, or the upstream stage it waits on
    certain: bool  # stale now; False: runs only if an upstream stage's outputs change
    epsilon: float | None = None  # train only: what it will charge, from the accountant
    exact: bool = False  # the plan from the dataset's counts; False: train.target_epsilon, an upper bound
    budget: str | None = None
    left_after: float | None = None
    code_files: tuple[str, ...] = ()  # files of privflow's own code among its changed deps


def _changed_code(entries: list, code: str | None) -> tuple[str, ...]:
    """The files of privflow's code among a stage's changed deps, relative to the code folder."""
    prefix = f"{Path(code)}/" if code else None
    return tuple(sorted(path.removeprefix(prefix) for entry in entries if isinstance(entry, dict) and prefix
                        for path in entry.get("changed deps", {}) if path.startswith(prefix)))


def _reasons(entries: list, code: str | None, recorded: dict[str, str | None] | None = None,
             root: Path = Path(".")) -> list[str]:
    """DVC's status of one stage, in words: which deps, params, outputs or command changed
    (`recorded`: the deps dvc.lock holds for it, each with its MD5; `root`: the project DVC's
    paths are under)."""
    recorded = recorded or {}
    prefix = f"{Path(code)}/" if code else None
    said, named = [], None  # named: the stage whose settings file says which keys changed
    for entry in entries:
        if not isinstance(entry, dict):
            said.append(str(entry))
            continue
        for path, change in entry.get("changed deps", {}).items():
            if isinstance(change, dict):  # a params file: {param: modified}
                said += [f"param {name} {what}" for name, what in change.items()]
            elif prefix and path.startswith(prefix):
                said.append(f"privflow code {path.removeprefix(prefix)} {change}")
            elif is_fingerprint(path):  # the source, as DVC sees it (privflow.data.fingerprint)
                why = unreadable(root / path)  # ingest will refuse with it
                said.append(_source_lost(why) if why else
                            "the source changed" if path in recorded else
                            f"the source is now seen through its keyed fingerprint, {path} (once, after an upgrade)")
            elif stage := stage_of_settings(path):  # what it reads of params.yaml (privflow.stage_settings)
                said.append(_settings_changed(root, stage, path, recorded[path]) if path in recorded
                            else f"its settings changed since it last ran (now seen as {path})")
                named = stage if said[-1].startswith(SETTINGS_NAMED) else named
            elif change == "deleted" and recorded and path not in recorded:  # dvc.lock holds no record of it
                said.append(f"a new input, {path} (a release added it)")
            else:
                said.append(f"{path} {change}")
        said += [f"output {path} {change}" for path, change in entry.get("changed outs", {}).items()]
        if "changed command" in entry:
            said.append("command changed")
    if named:  # the keys with their values say more than DVC's words for the stage's own sections
        own = {param.split(".")[0] for param in SPECS[named].params}
        said = [s for s in said if not (s.startswith("param ") and s.split()[1].split(".")[0] in own)]
    elif any(s.startswith("param ") for s in said):  # `param train modified` says it better than the file
        said = [s for s in said if not s.startswith(SETTINGS_CHANGED)]
    code_changes = [s for s in said if s.startswith("privflow code ")]
    if len(code_changes) > 3:  # an upgrade changes many files: count them
        said = [s for s in said if not s.startswith("privflow code ")] + [f"privflow code: {len(code_changes)} files changed"]
    return said or ["never run"]


SETTINGS_CHANGED = "what it reads of the dataset's settings changed"
SETTINGS_NAMED = "its settings changed:"  # followed by the keys, each with its old and new value


def _settings_changed(root: Path, stage: str, path: str, recorded_md5: str | None) -> str:
    """Which keys of what the stage reads changed since it last ran, when the version it ran with
    is kept here (not in a fresh clone)."""
    changes = settings_changes(root, stage, Path(path).stem, recorded_md5, root / path)
    return f"{SETTINGS_NAMED} {', '.join(changes)}" if changes else SETTINGS_CHANGED


def _source_lost(why: str) -> str:
    return f"its source cannot be read ({why})"


def _locked(root: Path) -> dict[str, dict[str, str | None]]:
    """The stages dvc.lock has a record of (a stage without one has never run here), each with
    its recorded deps: path -> MD5."""
    lock = root / "dvc.lock"
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {}) if lock.exists() else {}
    return {name: {dep["path"]: dep.get("md5") for dep in entry.get("deps", [])} for name, entry in stages.items()}


def unreadable_sources(datasets: list[str], dag: Dag) -> dict[str, str]:
    """The datasets whose source could not be read when the fingerprints were last taken (by
    `read_dag(with_status=True)`), each with why: their ingest would refuse with those words."""
    folder = dag.outputs.get(FINGERPRINT_STAGE, [None])[0]
    said = {name: unreadable(fingerprint_file(folder, name)) for name in datasets} if folder else {}
    return {name: why for name, why in said.items() if why}


def stale_stages(root: Path, datasets: list[str], dag: Dag | None = None) -> list[PlannedStage]:
    """Stale stages (certain) and the stages downstream of them (may run), in DAG order."""
    code, _ = declared_code(root / "dvc.yaml")
    dag = dag or read_dag(root, with_status=True)
    order = dag.order
    wanted = sorted((s for s in order if s.partition("@")[2] in datasets),
                    key=lambda s: (datasets.index(s.partition("@")[2]), order.index(s)))
    locked = _locked(root)
    planned, running = [], set()
    for stage in wanted:
        if stage in dag.stale:
            if stage in locked:
                why = "; ".join(_reasons(dag.stale[stage], code, locked[stage], root))
                planned.append(PlannedStage(stage, why, True, code_files=_changed_code(dag.stale[stage], code)))
            else:  # every dep of a stage that never ran counts as changed: none is news, but a lost source
                lost = unreadable_sources([dataset_of(stage)], dag) if stage.startswith("ingest@") else {}
                why = "; ".join(["never run", *map(_source_lost, lost.values())])
                planned.append(PlannedStage(stage, why, True))
            running.add(stage)
        elif upstream := sorted(set(dag.readers.predecessors(stage)) & running):
            planned.append(PlannedStage(stage, f"if the outputs of {', '.join(upstream)} change", False))
            running.add(stage)
    return planned


def with_spending(root: Path, planned: list[PlannedStage], dag: Dag) -> list[PlannedStage]:
    """Each train stage with the epsilon it will charge and the budget left after it."""
    from privflow.artifacts import read_json
    from privflow.budget import budget_name
    from privflow.privacy.accounting import composed_epsilon
    from privflow.privacy.ledger import PrivacyLedger
    from privflow.settings import ledger_location, load_settings
    from privflow.training.charge import plan_from_counts

    done, running = [], {p.stage for p in planned}
    for item in planned:
        if not item.stage.startswith("train@"):
            done.append(item)
            continue
        settings = load_settings(item.stage.partition("@")[2], root / "params.yaml")
        name, t = budget_name(settings), settings.train
        description = dag.outputs[f"encrypt@{settings.dataset.name}"][0] / DATASET
        ledger = PrivacyLedger(ledger_location(settings))
        charges = ledger.charges(name)
        mac_key = ledger.memo_key() if charges else None  # remembered compositions exist only after a charge
        history = [(c.noise_multiplier, c.sample_rate, c.steps) for c in charges]
        epsilon, after, exact = t.target_epsilon, None, False
        dataset = settings.dataset.name
        rows_known = not any(f"{stage}@{dataset}" in running for stage in ("ingest", "validate", "encrypt"))
        if description.exists() and item.certain and rows_known:  # the rows are known: the exact plan
            try:
                plan = plan_from_counts(read_json(description), settings)
            except PrivflowError:  # train will refuse and say why; the plan shows the bound
                plan = None
            if plan is not None:
                epsilon, exact = plan.epsilon, True
                after = composed_epsilon([*history, (plan.noise_multiplier, plan.sample_rate, plan.steps)],
                                         sum(c.delta for c in charges) + plan.delta, mac_key=mac_key, from_memo=True)
        left = settings.privacy.epsilon_cap - (after if after is not None else
                                               composed_epsilon(history, sum(c.delta for c in charges), mac_key=mac_key,
                                                                from_memo=True) + epsilon)
        done.append(replace(item, epsilon=epsilon, exact=exact, budget=name, left_after=left))
    return done
