"""Recompute every ledger charge with a second, independent accountant library.

Opacus' PRV accountant charges the runs; Google's dp-accounting recomputes them with its
privacy-loss-distribution (PLD) accountant, and with RDP as an upper bound. Both PRV and
PLD are numerical approximations of the same optimal bound, so they must agree within a
tolerance; RDP is a looser bound and must never come out below them.
"""

from __future__ import annotations

from dataclasses import dataclass

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from privflow.privacy.ledger import Charge, budget_of

RELATIVE_TOLERANCE = 0.03
_PLD_GRID = 1e-4  # dp-accounting's value_discretization_interval (its own default)


@dataclass(frozen=True)
class Recomputation:
    label: str
    charged: float   # what privflow charged (Opacus)
    pld: float       # dp-accounting, privacy loss distributions
    rdp: float       # dp-accounting, Renyi DP (an upper bound)

    @property
    def relative_gap(self) -> float:
        return abs(self.charged - self.pld) / self.pld

    @property
    def problems(self) -> list[str]:
        found = []
        if self.relative_gap > RELATIVE_TOLERANCE:
            found.append(f"{self.label}: charged epsilon {self.charged:.4f} but dp-accounting PLD gives "
                         f"{self.pld:.4f} ({self.relative_gap:.1%} apart, tolerance {RELATIVE_TOLERANCE:.0%})")
        if self.rdp < min(self.charged, self.pld) * (1 - 1e-6):
            found.append(f"{self.label}: RDP bound {self.rdp:.4f} is below the tight estimates")
        return found


def _event(charges: list[Charge]) -> dp_accounting.DpEvent:
    return dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(c.sample_rate, dp_accounting.GaussianDpEvent(c.noise_multiplier)),
            c.steps)
        for c in charges])


def _epsilons(charges: list[Charge], delta: float) -> tuple[float, float]:
    pld = pld_privacy_accountant.PLDAccountant(value_discretization_interval=_PLD_GRID)
    rdp = rdp_privacy_accountant.RdpAccountant()
    event = _event(charges)
    return pld.compose(event).get_epsilon(delta), rdp.compose(event).get_epsilon(delta)


def recompute(charges: list[Charge], cap: float) -> list[Recomputation]:
    """One row per charge, and one for the composition of all of them (what the cap sees)."""
    rows = []
    for charge in charges:
        pld, rdp = _epsilons([charge], charge.delta)
        rows.append(Recomputation(f"run {charge.run_id[:12]} ({charge.accountant})", charge.epsilon, pld, rdp))
    if len(charges) > 1:
        budget = budget_of(charges[0].dataset, cap, charges)
        pld, rdp = _epsilons(charges, budget.delta_total)
        rows.append(Recomputation(f"all {len(charges)} runs composed", budget.spent, pld, rdp))
    return rows
