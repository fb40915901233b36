"""What a position closed on the exchange (a ghost) earned, from the exchange's trade history.

The exit price is the volume-weighted price of the closing trades that cover the open
quantity; the realized PnL is the exchange's own figure when every trade carries one
(Binance), otherwise it is computed from our entry price. No trades: both unknown (None),
never a made-up 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from egis.models import Side
from egis.rules.intent import pnl


@dataclass(frozen=True)
class ClosingTrade:
    price: Decimal
    quantity: Decimal
    realized_pnl: Decimal | None


def exit_from_trades(
    side: Side, entry_price: Decimal | None, open_quantity: Decimal, trades: Sequence[ClosingTrade]
) -> tuple[Decimal | None, Decimal | None]:
    """(exit price, realized PnL) of closing `open_quantity`, or (None, None) if unknown."""
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
        return None, None
    exit_price = sum((t.price * q for t, q in used), Decimal(0)) / covered
    if all(t.realized_pnl is not None and q == t.quantity for t, q in used):
        return exit_price, sum((t.realized_pnl for t, _ in used), Decimal(0))  # type: ignore[misc]
    if entry_price is None:
        return exit_price, None
    return exit_price, pnl(side, entry_price, exit_price, covered)
