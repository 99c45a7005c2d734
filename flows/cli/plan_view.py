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
    for line in never_run_lines(planned):
        console.print(line, highlight=False)
    for item in (p for p in planned if p.why != "never run" or p.epsilon is not None):
        spend = ""
        if item.epsilon is not None:
            spend = (f"; spends {'' if item.exact else 'up to '}epsilon {item.epsilon:.3f} of budget {item.budget}, "
                     f"{'' if item.exact else 'at least '}{item.left_after:.3f} left after")
        console.print(f"plan: {item.stage} {'runs' if item.certain else 'may run'}: {item.why}{spend}", highlight=False)
    return planned


def never_run_lines(planned: list) -> list[str]:
    """A first run: the stages that never ran and spend nothing, one line for all the datasets
    that share the same list of them (the demo's five: one line, not five)."""
    never: dict[str, list[str]] = {}
    for item in planned:
        if item.why == "never run" and item.epsilon is None:
            never.setdefault(item.stage.partition("@")[2], []).append(item.stage.partition("@")[0])
    shared: dict[tuple[str, ...], list[str]] = {}
    for name, stages in never.items():
        shared.setdefault(tuple(stages), []).append(name)
    return [f"plan: {', '.join(stages)} of {', '.join(names)} run: never run" for stages, names in shared.items()]


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
        console.print(f"[yellow]{stage} will re-run because privflow's code changed ({shown}): it will spend up "
                      f"to epsilon {settings.train.target_epsilon:g} of budget {name} ({left:.3f} left)[/yellow]",
                      highlight=False)
