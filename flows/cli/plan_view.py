"""What a run will do, printed before anything runs: the plan (which stages, why, what each
train spends) and a warning when privflow's own code change makes a train spend again."""

from __future__ import annotations

from pathlib import Path

from privflow.flows.cli.common import console


def show_plan(root: Path, stale: list, dag) -> list:
    """Print what the run will do (privflow.flows.plan) and return it."""
    from privflow.flows.plan import with_spending

    planned = with_spending(root, stale, dag)
    if not planned:
        console.print("plan: every stage is up to date; nothing runs, nothing is spent", highlight=False)
    for line in grouped_lines(planned):
        console.print(line, highlight=False)
    for item in (p for p in planned if not _grouped(p)):
        spend = "" if item.epsilon is None else f"; {spending(item)}"
        console.print(f"plan: {item.stage} {'runs' if item.certain else 'may run'}: {item.why}{spend}", highlight=False)
    return planned


def spending(item) -> str:
    """What a train stage will charge and what is left after it; past the cap, that train will
    (or may) refuse and charge nothing, and what to change."""
    spends = f"spends {'' if item.exact else 'up to '}epsilon {item.epsilon:.3f} of budget {item.budget}"
    if item.left_after >= 0:
        return f"{spends}, {'' if item.exact else 'at least '}{item.left_after:.3f} left after"
    over = (f"over its cap by {-item.left_after:.3f}: it will refuse before reading any data, and charge nothing"
            if item.exact else
            f"which may go over its cap (by up to {-item.left_after:.3f}, composed with its earlier runs once its "
            "data is known): then it refuses before reading any data, and charges nothing")
    return f"{spends}, {over}; lower train.target_epsilon, or have the data owner raise privacy.epsilon_cap"


NEVER_RUN = "run: never run"
MAY_RUN = "may run: if the stages before them write new outputs"


def _grouped(item) -> str | None:
    """Which shared line a stage that spends nothing is said in: never run, or runs only if a
    stage upstream writes new outputs (e.g. after an upgrade that re-runs ingest). Stages that
    run for a reason of their own, and every train, keep a line each."""
    if item.epsilon is not None:
        return None
    return NEVER_RUN if item.why == "never run" else MAY_RUN if not item.certain else None


def grouped_lines(planned: list) -> list[str]:
    """The stages that spend nothing and never ran, or may run only because of a stage before
    them: one line for all the datasets that share the same list of them (a first run of the
    demo's five: one line, not 35)."""
    lists: dict[tuple[str, str], list[str]] = {}
    for item in planned:
        if said := _grouped(item):
            lists.setdefault((said, item.stage.partition("@")[2]), []).append(item.stage.partition("@")[0])
    shared: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for (said, name), stages in lists.items():
        shared.setdefault((said, tuple(stages)), []).append(name)
    return [f"plan: {', '.join(stages)} of {', '.join(names)} {said}" for (said, stages), names in shared.items()]


def announce_code_spending(root: Path, planned: list) -> None:
    """Before anything runs: a train stage that re-runs because privflow's code changed spends
    budget though no data or setting changed; say so, and how much it may spend."""
    from privflow.budget import budget_name
    from privflow.flows.stages import dataset_of
    from privflow.privacy.ledger import PrivacyLedger
    from privflow.settings import ledger_location, load_settings

    for stage, files in ((p.stage, p.code_files) for p in planned if p.code_files):
        if stage.split("@")[0] != "train":
            continue
        settings = load_settings(dataset_of(stage), root / "params.yaml")
        name = budget_name(settings)
        left = PrivacyLedger(ledger_location(settings)).budget(name, settings.privacy.epsilon_cap,
                                                                 from_memo=True).remaining
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        console.print(f"{stage} will re-run because privflow's code changed ({shown}): it will spend up "
                      f"to epsilon {settings.train.target_epsilon:g} of budget {name} ({left:.3f} left)",
                      style="yellow", highlight=False)
