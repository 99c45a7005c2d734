"""Commands for the auditor: the privacy budget ledger, its integrity and an independent recomputation."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from privflow.flows.cli.common import EVERY_DATASET, chosen_settings, console

app = typer.Typer(help="The privacy budget ledger.")


@app.command("show")
def budget_show(dataset: str = EVERY_DATASET) -> None:
    """Charges against each dataset's budget (or the named one's) and what is left of its cap."""
    from privflow.budget import budget_name
    from privflow.privacy.ledger import PrivacyLedger
    from privflow.settings import ledger_location

    for settings in chosen_settings(dataset):
        name = budget_name(settings)
        ledger = PrivacyLedger(ledger_location(settings))
        table = Table("time", "run", "accountant", "noise", "q", "steps", "delta", "epsilon", title=name)
        for c in ledger.charges(name):
            table.add_row(c.created_at, c.run_id[:12], c.accountant, f"{c.noise_multiplier:.3f}",
                          f"{c.sample_rate:.4f}", str(c.steps), f"{c.delta:g}", f"{c.epsilon:.3f}")
        console.print(table)
        budget = ledger.budget(name, settings.privacy.epsilon_cap, from_memo=True)
        console.print(f"{name}: {budget.runs} run(s), composed epsilon {budget.spent:.3f} at delta "
                      f"{budget.delta_total:g} (sum of epsilons {budget.spent_sum:.3f}) of cap {budget.cap:g}; "
                      f"remaining {budget.remaining:.3f}")


@app.command("verify")
def budget_verify(dataset: str = EVERY_DATASET) -> None:
    """Check the ledger: its authenticated chain, and every anchor of its head kept outside it
    (sealed beside each model and in the project, in the metrics, in the DVC cache and in archived reports).
    Exit 1 on any edit, deletion, reset, truncation or rebuild."""
    from privflow.artifacts import open_vault
    from privflow.budget import budget_name, find_anchors, with_project_anchors
    from privflow.flows.stages import reports_dir, stage_outputs
    from privflow.privacy.ledger import PrivacyLedger, ledger_key
    from privflow.settings import ledger_location

    vault = open_vault()
    by_ledger: dict[str, list] = {}
    budgets: dict[str, set[str]] = {}
    for settings in chosen_settings(dataset):
        name, budget = settings.dataset.name, budget_name(settings)
        model_dir, *rest = stage_outputs(Path("."), f"train@{name}")
        metrics = next((p for p in rest if p.name == "train.json"), None)
        anchors, missing = find_anchors(vault, budget, model_dir=model_dir, metrics=metrics,
                                        reports=reports_dir(Path("."), name))
        by_ledger.setdefault(ledger_location(settings), []).extend(anchors)
        budgets.setdefault(ledger_location(settings), set()).add(budget)
        console.print(f"{name} (budget {budget}): {len(anchors)} anchor(s) found"
                      + (f"; none in {', '.join(missing)}" if missing else ""), highlight=False)
    problems = []
    for location, anchors in by_ledger.items():
        anchors = with_project_anchors(vault, anchors, budgets[location])
        ledger = PrivacyLedger(location, key=ledger_key(vault.keys))
        problems += ledger.verify(anchors)
        console.print(f"ledger {ledger.engine.url.render_as_string(hide_password=True)}: {ledger.count()} "
                      f"entries, {len(anchors)} anchor(s) checked", highlight=False)
    for problem in problems:
        console.print(problem, style="red", highlight=False)
    if problems:
        console.print("restore the ledger from its backup; until it verifies, train refuses to charge it")
        raise typer.Exit(1)
    console.print("ledger intact")


@app.command("audit")
def budget_audit(dataset: str = EVERY_DATASET) -> None:
    """Recompute every charge with Google's dp-accounting (PLD and RDP); exit 1 on a mismatch."""
    from privflow.privacy.crosscheck import RELATIVE_TOLERANCE, recompute
    from privflow.privacy.ledger import PrivacyLedger
    from privflow.settings import ledger_location

    problems, checked = [], 0
    for settings in chosen_settings(dataset):
        from privflow.budget import budget_name

        charges = PrivacyLedger(ledger_location(settings)).charges(budget_name(settings))
        rows = recompute(charges, settings.privacy.epsilon_cap)
        table = Table("what", "charged (Opacus)", "PLD (dp-accounting)", "gap", "RDP (dp-accounting)",
                      title=f"{settings.dataset.name}: independent recomputation, tolerance {RELATIVE_TOLERANCE:.0%}")
        for row in rows:
            table.add_row(row.label, f"{row.charged:.4f}", f"{row.pld:.4f}", f"{row.relative_gap:.2%}",
                          f"{row.rdp:.4f}")
        console.print(table)
        problems += [p for row in rows for p in row.problems]
        checked += len(charges)
    for problem in problems:
        console.print(problem, style="red")
    if problems:
        raise typer.Exit(1)
    console.print(f"{checked} charge(s) confirmed by an independent accountant")
