"""The aged-position policy (seed 003): when an old position should be closed, and at what price.

Phases by age (seconds since the position opened), from `AgedPolicy`:
- `none` (age < max_age_s): no aged exit.
- `grace` (< max_age_s + grace_s): target = breakeven (the entry price).
- `progressive` (< expire_s): the accepted loss grows by loss_step_pct for each started hour
  of the phase, capped at max_loss_pct.
- `expired`: close at market.
The exit reason of an aged close is `aged_<phase>`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from egis.models import AgedPolicy, Side, fixed

HOUR = 3600


@dataclass(frozen=True)
class AgedPhase:
    phase: str  # none | grace | progressive | expired
    loss_pct: Decimal | None  # accepted loss for the target; None when there is no target
    seconds_to_next: float | None  # until the target or phase next changes; None: never

    @property
    def closes_at_market(self) -> bool:
        return self.phase == "expired"


def aged_phase(policy: AgedPolicy, age_s: float) -> AgedPhase:
    if age_s < policy.max_age_s:
        return AgedPhase("none", None, policy.max_age_s - age_s)
    progressive_start = policy.max_age_s + policy.grace_s
    if age_s < progressive_start:
        return AgedPhase("grace", Decimal(0), progressive_start - age_s)
    if age_s < policy.expire_s:
        hours = math.floor((age_s - progressive_start) / HOUR) + 1
        loss = min(policy.loss_step_pct * hours, policy.max_loss_pct)
        next_hour = progressive_start + hours * HOUR
        return AgedPhase("progressive", loss, min(next_hour, policy.expire_s) - age_s)
    return AgedPhase("expired", None, None)


def target_price(entry: Decimal, side: Side, loss_pct: Decimal) -> Decimal:
    """The price at which closing loses exactly `loss_pct` percent (0 = breakeven)."""
    factor = loss_pct / Decimal(100)
    return fixed(entry * (1 - factor) if side is Side.LONG else entry * (1 + factor))


def target_reached(side: Side, price: Decimal, target: Decimal) -> bool:
    """A long closes when the price is at or above its target; a short at or below."""
    return price >= target if side is Side.LONG else price <= target
