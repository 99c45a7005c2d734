"""The budget before the data: plan from counts, verify the ledger, refuse or charge, then decrypt.

Order matters: the plan from counts alone, the ledger verified against its anchors, the cap
checked, the inputs authenticated, and only then the charge, written ahead of training for
the full plan: a killed run is never charged less than the steps it took, and it resumes
from its last sealed checkpoint under the same charge.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

from privflow.artifacts import git_commit
from privflow.budget import (budget_name, budgets_in_ledger, find_anchors, open_ledger, refuse_unless_intact,
                             with_project_anchors, write_anchor)
from privflow.catalog import split_file, split_identity
from privflow.crypto.vault import Vault
from privflow.errors import PrivacyError
from privflow.privacy.accounting import DpSgdPlan, plan_dp_sgd
from privflow.privacy.ledger import Charge
from privflow.settings import Settings


def privacy_unit_bound(description: dict, settings: Settings) -> int:
    """Rows per privacy unit that training keeps: 1 for example-level data, else the declared
    bound; several rows per person without a bound are refused."""
    if not description["several_rows_per_unit"]:
        return 1
    bound = settings.privacy.max_rows_per_unit
    if bound is None:
        unit = description["privacy_unit"]
        raise PrivacyError(
            f"some {unit} has several rows: example-level DP would understate that person's epsilon. "
            f"Set privacy.max_rows_per_unit (the most rows of one {unit} that training keeps, e.g. 10) to "
            "train with user-level DP (each person's first rows kept, clipped and accounted as one), or "
            "declare the unit column unique in the schema")
    return bound


def plan_from_counts(description: dict, settings: Settings, extra_rows: int = 0) -> DpSgdPlan:
    """The run's plan (noise, sample rate, steps, epsilon) from the dataset's counts alone."""
    bound = privacy_unit_bound(description, settings)
    train_split = description["splits"]["train"]
    units = (train_split.get("units", train_split["rows"]) if bound > 1 else train_split["rows"]) + extra_rows
    t = settings.train
    return plan_dp_sgd(rows=units, batch_size=t.batch_size, epochs=t.epochs, target_epsilon=t.target_epsilon,
                       target_delta=t.target_delta, accountant=t.accountant)


def plan_and_charge(description: dict, settings: Settings, run_id: str, extra_rows: int = 0, *, vault: Vault,
                    data_dir: Path, metrics: Path | None = None) -> tuple[DpSgdPlan, dict]:
    """Refuse or charge before training reads a row; returns the plan and the budget after it.

    In this order, each a refusal that charges nothing: the plan from counts alone; the
    ledger verified against its anchors; the budget (cap, and the snapshot's own budget);
    the inputs' identity and authentication tags (plaintext dropped as it is checked).
    Only then the charge, and the ledger's new head as an anchor."""
    plan = plan_from_counts(description, settings, extra_rows)
    charge = Charge(run_id=run_id, dataset=budget_name(settings),
                    privacy_unit=description["privacy_unit"], snapshot_id=description["snapshot_id"],
                    stage="train", mechanism="DP-SGD (Poisson-sampled Gaussian)",
                    accountant=plan.accountant, noise_multiplier=plan.noise_multiplier,
                    sample_rate=plan.sample_rate, steps=plan.steps, delta=plan.delta,
                    epsilon=plan.epsilon, code_commit=git_commit(),
                    created_at=datetime.now(UTC).isoformat(timespec="seconds"))
    ledger = open_ledger(settings, vault)
    anchors = with_project_anchors(vault, find_anchors(vault, charge.dataset, metrics=metrics)[0],
                                   budgets_in_ledger(settings))
    refuse_unless_intact(ledger, anchors, f"dataset {description['dataset']}")
    ledger.check(charge, settings.privacy.epsilon_cap)
    authenticate_splits(vault, description, data_dir)
    budget = ledger.charge(charge, settings.privacy.epsilon_cap)
    write_anchor(vault, ledger.anchor(run_id))
    return plan, _budget_dict(budget, plan)


def authenticate_splits(vault: Vault, description: dict, folder: Path) -> None:
    """Both splits are what encrypt sealed for this snapshot (identity and every tag)."""
    for split in ("train", "test"):
        vault.authenticate(folder / split_file(split),
                           split_identity(description["dataset"], description["snapshot_id"], split))


def _budget_dict(budget, plan: DpSgdPlan) -> dict:
    return {"cap": budget.cap, "spent_total": budget.spent, "spent_sum": budget.spent_sum,
            "delta_total": budget.delta_total, "this_run": plan.epsilon}


def resume_or_charge(description: dict, settings: Settings, checkpoint, extra_rows: int, *, vault: Vault,
                     data_dir: Path, metrics: Path | None = None):
    """A checkpoint of this configuration whose charge is in the ledger: continue that run
    under its charge. Otherwise a new run, charged (or refused) before any decryption."""
    state = checkpoint.read() if checkpoint is not None and checkpoint.path.exists() else None
    ledger, budget_id = open_ledger(settings, vault), budget_name(settings)
    if state is not None and any(c.run_id == state.run_id for c in ledger.charges(budget_id)):
        plan = DpSgdPlan(**state.plan)
        budget = ledger.budget(budget_id, settings.privacy.epsilon_cap)
        return state.run_id, plan, _budget_dict(budget, plan)
    if checkpoint is not None:
        checkpoint.discard()
    run_id = uuid.uuid4().hex
    plan, budget = plan_and_charge(description, settings, run_id, extra_rows, vault=vault, data_dir=data_dir,
                                   metrics=metrics)
    return run_id, plan, budget
