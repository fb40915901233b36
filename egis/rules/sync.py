"""Exchange sync: how the exchange's open positions and ours disagree (one account).

- ghost: we hold an open position the exchange does not (same symbol and side). The
  position's workflow is told; it re-reads and closes it as `closed_on_exchange`.
- orphan: the exchange holds a position we don't know. Reported, never adopted or closed.
- quantity_drift: both hold it, sizes differ by at least one amount step. The workflow is
  told; it re-reads and records the exchange's quantity.
Positions that are opening or closing, or younger than `grace_seconds`, belong to a workflow
that is acting right now: they are neither ghosts nor hidden orphans.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from egis.rules.sizing import quantities_differ

GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class OurPosition:
    position_id: int
    workflow_id: str | None
    symbol: str
    side: str
    status: str
    open_quantity: Decimal
    opened_at: datetime | None


@dataclass(frozen=True)
class TheirPosition:
    symbol: str
    side: str
    quantity: Decimal


@dataclass(frozen=True)
class Drift:
    position: OurPosition
    exchange_quantity: Decimal


@dataclass
class SyncFindings:
    ghosts: list[OurPosition] = field(default_factory=list)
    orphans: list[TheirPosition] = field(default_factory=list)
    drifts: list[Drift] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"ghost": len(self.ghosts), "orphan": len(self.orphans), "quantity_drift": len(self.drifts)}


def diff_account(
    ours: Sequence[OurPosition],
    theirs: Sequence[TheirPosition],
    steps: Mapping[str, Decimal],
    now: datetime,
    grace_seconds: float = GRACE_SECONDS,
) -> SyncFindings:
    findings = SyncFindings()
    exchange = {(p.symbol, p.side): p for p in theirs}
    for position in ours:
        settled = position.status == "open" and (
            position.opened_at is None or (now - position.opened_at).total_seconds() >= grace_seconds
        )
        if not settled:
            continue
        theirs_now = exchange.get((position.symbol, position.side))
        if theirs_now is None:
            findings.ghosts.append(position)
        elif quantities_differ(position.open_quantity, theirs_now.quantity, steps.get(position.symbol, Decimal(0))):
            findings.drifts.append(Drift(position, theirs_now.quantity))
    findings.orphans.extend(untracked(list(exchange.values()), ours))
    return findings


def untracked(theirs: Sequence[TheirPosition], ours: Sequence[OurPosition]) -> list[TheirPosition]:
    """The exchange's positions that no live Egis position (any live status: a workflow owns it)
    accounts for: orphans for the sync, and the reason an open in that symbol is refused, since
    in one-way mode it would net against them."""
    known = {(p.symbol, p.side) for p in ours}
    return [p for p in theirs if (p.symbol, p.side) not in known]
