"""What a position closed on the exchange (a ghost) earned, from the exchange's trade history.

The trades come newest first: the most recent closing trades are what closed the quantity we
still held (an earlier partial reduction was already recorded as a quantity adjustment). The
exit price is the volume-weighted price of those that cover the open quantity; the realized PnL
is the exchange's own figure when every trade used carries one (Binance), otherwise it is
computed from our entry price. No trades: both unknown (None), never a made-up 0.

The exit reason says who closed it: `liquidated` when the liquidation engine took (part of) it,
`auto_deleveraged` when ADL did, `closed_on_exchange` otherwise (a stop, a manual close, or no
trade found).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from egis.models import Side, fixed
from egis.rules.intent import pnl

CLOSED_ON_EXCHANGE = "closed_on_exchange"
LIQUIDATED = "liquidated"
AUTO_DELEVERAGED = "auto_deleveraged"


@dataclass(frozen=True)
class ClosingTrade:
    price: Decimal
    quantity: Decimal
    realized_pnl: Decimal | None
    kind: str = "trade"  # trade | liquidation | adl


@dataclass(frozen=True)
class Exit:
    price: Decimal | None
    realized_pnl: Decimal | None
    reason: str


def exit_from_trades(
    side: Side, entry_price: Decimal | None, open_quantity: Decimal, trades: Sequence[ClosingTrade]
) -> Exit:
    """The exit of closing `open_quantity`, from closing trades newest first."""
    used: list[tuple[ClosingTrade, Decimal]] = []
    remaining = open_quantity
    for trade in trades:
        if remaining <= 0:
            break
        take = min(trade.quantity, remaining)
        used.append((trade, take))
        remaining -= take
    covered = open_quantity - remaining
    if not used or covered <= 0:
        return Exit(None, None, CLOSED_ON_EXCHANGE)
    kinds = {t.kind for t, _ in used}
    reason = LIQUIDATED if "liquidation" in kinds else AUTO_DELEVERAGED if "adl" in kinds else CLOSED_ON_EXCHANGE
    exit_price = fixed(sum((t.price * q for t, q in used), Decimal(0)) / covered)
    if all(t.realized_pnl is not None and q == t.quantity for t, q in used):
        return Exit(exit_price, sum((t.realized_pnl for t, _ in used), Decimal(0)), reason)  # type: ignore[misc]
    if entry_price is None:
        return Exit(exit_price, None, reason)
    return Exit(exit_price, pnl(side, entry_price, exit_price, covered), reason)
