"""The intent rule (seed 000 §3): what a fill may do to a position.

- A fill of an OPEN order creates a position, or increases the one that order opened.
- A fill of a CLOSE order reduces or closes exactly the position it references. It can never
  create a position, flip its side, or increase it: any attempt raises `IntentViolation`
  and the caller writes nothing.

This is what makes seed 000's phantom SHORT impossible: a close SELL is never read as an open
SELL, because the order carries its intent and the position it closes.

Pure functions only; the store applies the returned snapshot in the same transaction that
marks the order filled.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal

from egis.errors import IntentViolation, InvalidInput
from egis.models import Intent, OrderSide, PositionStatus, Side, fixed, order_side_for

ZERO = Decimal(0)


@dataclass(frozen=True)
class PositionSnapshot:
    """The fields of a position the intent rule reads and writes."""

    side: Side
    status: PositionStatus
    quantity: Decimal = ZERO  # total filled by OPEN orders (what was held at the peak)
    closed_quantity: Decimal = ZERO  # total filled by CLOSE orders
    entry_price: Decimal | None = None  # volume-weighted over open fills
    exit_price: Decimal | None = None  # volume-weighted over close fills
    realized_pnl: Decimal | None = None  # sum over close fills; None until something closed

    @property
    def open_quantity(self) -> Decimal:
        return self.quantity - self.closed_quantity


@dataclass(frozen=True)
class OrderRef:
    """An order as the rule sees it: its intent, its side, and the side of its position."""

    intent: Intent
    side: OrderSide
    position_side: Side


@dataclass(frozen=True)
class Fill:
    """One increment of execution: quantity and average price of that increment."""

    quantity: Decimal
    price: Decimal


def pnl(side: Side, entry: Decimal, exit_: Decimal, quantity: Decimal) -> Decimal:
    """Gross realized PnL of closing `quantity` (fees are recorded on orders, not here)."""
    move = exit_ - entry if side is Side.LONG else entry - exit_
    return move * quantity


def _vwap(q1: Decimal, p1: Decimal | None, q2: Decimal, p2: Decimal) -> Decimal:
    if p1 is None or q1 == 0:
        return p2
    return fixed((q1 * p1 + q2 * p2) / (q1 + q2))


def _check_fill(fill: Fill) -> None:
    for name, value in (("fill quantity", fill.quantity), ("fill price", fill.price)):
        if not value.is_finite() or value <= 0:
            raise InvalidInput(f"{name} must be a positive finite number, got {value}")


def apply_fill(position: PositionSnapshot | None, order: OrderRef, fill: Fill) -> PositionSnapshot:
    """Return the position after `fill` of `order`, or raise IntentViolation / InvalidInput."""
    _check_fill(fill)
    expected_side = order_side_for(order.intent, order.position_side)
    if order.side is not expected_side:
        verb = "increase" if order.intent is Intent.CLOSE else "close"
        raise IntentViolation(
            f"a {order.intent} order for a {order.position_side.upper()} must be a {expected_side}; "
            f"a {order.side} would {verb} it instead",
            intent=order.intent,
            order_side=order.side,
        )
    if order.intent is Intent.OPEN:
        return _apply_open(position, order, fill)
    return _apply_close(position, order, fill)


def _apply_open(position: PositionSnapshot | None, order: OrderRef, fill: Fill) -> PositionSnapshot:
    if position is None:
        return PositionSnapshot(
            side=order.position_side,
            status=PositionStatus.OPEN,
            quantity=fill.quantity,
            entry_price=fill.price,
        )
    if position.side is not order.position_side:
        raise IntentViolation(
            f"an open {order.position_side} fill cannot apply to a {position.side} position",
        )
    if position.status not in (PositionStatus.OPENING, PositionStatus.OPEN):
        raise IntentViolation(f"an open fill cannot apply to a position in status {position.status}")
    return replace(
        position,
        status=PositionStatus.OPEN,
        quantity=position.quantity + fill.quantity,
        entry_price=_vwap(position.quantity, position.entry_price, fill.quantity, fill.price),
    )


def _apply_close(position: PositionSnapshot | None, order: OrderRef, fill: Fill) -> PositionSnapshot:
    if position is None:
        raise IntentViolation("a close order must reference an existing position; it can never create one")
    if position.side is not order.position_side:
        raise IntentViolation(
            f"the close order was for a {order.position_side} but the position is {position.side}",
        )
    if position.status not in (PositionStatus.OPEN, PositionStatus.CLOSING):
        raise IntentViolation(f"cannot apply a close fill to a position in status {position.status}")
    if fill.quantity > position.open_quantity:
        raise IntentViolation(
            f"a close fill of {fill.quantity} exceeds the open quantity {position.open_quantity}: "
            "it would flip the position",
            fill_quantity=str(fill.quantity),
            open_quantity=str(position.open_quantity),
        )
    if position.entry_price is None:
        raise IntentViolation("cannot close a position that has no entry price (it never filled)")
    closed = position.closed_quantity + fill.quantity
    gained = pnl(position.side, position.entry_price, fill.price, fill.quantity)
    return replace(
        position,
        status=PositionStatus.CLOSED if closed == position.quantity else PositionStatus.CLOSING,
        closed_quantity=closed,
        exit_price=_vwap(position.closed_quantity, position.exit_price, fill.quantity, fill.price),
        realized_pnl=(position.realized_pnl or ZERO) + gained,
    )


def increment(
    previous_filled: Decimal,
    previous_average: Decimal | None,
    cumulative_filled: Decimal,
    cumulative_average: Decimal,
) -> Fill | None:
    """Turn an exchange's cumulative (filled, average) report into the new increment, if any.

    Exchanges report an order's cumulative executed quantity and average price; recording the
    same report twice must not fill twice, so only the increment is applied.
    """
    if cumulative_filled < previous_filled:
        raise InvalidInput(
            f"cumulative filled quantity went backwards: {previous_filled} -> {cumulative_filled}",
        )
    delta = cumulative_filled - previous_filled
    if delta == 0:
        return None
    if previous_filled == 0 or previous_average is None:
        return Fill(quantity=delta, price=cumulative_average)
    price = (cumulative_filled * cumulative_average - previous_filled * previous_average) / delta
    return Fill(quantity=delta, price=fixed(price))
