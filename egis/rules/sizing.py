"""Quantity rules: turning a USD amount into an order quantity a market accepts, and
deciding when the exchange's quantity and ours really differ (seed 003, "quantity mismatch").
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

from egis.errors import QuantityRejected
from egis.models import MAX_QUANTITY as ABSURD_QUANTITY
from egis.models import fixed


@dataclass(frozen=True)
class MarketRules:
    """A market's precision and minimums, as the exchange publishes them."""

    symbol: str
    amount_step: Decimal
    min_quantity: Decimal
    min_notional: Decimal = Decimal(0)
    max_quantity: Decimal | None = None
    price_tick: Decimal | None = None


def floor_to_step(quantity: Decimal, step: Decimal) -> Decimal:
    """Largest multiple of `step` not above `quantity`."""
    return fixed((quantity / step).to_integral_value(rounding=ROUND_DOWN) * step)


def validate_quantity(
    quantity: Decimal, rules: MarketRules, price: Decimal | None = None, *, reduce_only: bool = False
) -> Decimal:
    """Raise QuantityRejected unless the market would accept `quantity` (checked before sending).

    A reduce-only order is held to the step and the maximum but not to the market minimums:
    the remainder of a position reduced on the exchange (a partial stop, a manual partial
    close) can sit below the minimum order size, and a reduce-only order is the only way to
    close it. Exchanges exempt reduce-only orders from their minimum filters for that reason;
    where one refuses anyway, the refusal is PERMANENT and reaches an operator.
    """
    if not quantity.is_finite() or quantity <= 0:
        raise QuantityRejected(f"{rules.symbol}: quantity must be positive, got {quantity}")
    limit = rules.max_quantity if rules.max_quantity is not None else ABSURD_QUANTITY
    if quantity > limit:
        raise QuantityRejected(f"{rules.symbol}: quantity {quantity} is above the market maximum {limit}")
    if quantity % rules.amount_step != 0:
        raise QuantityRejected(
            f"{rules.symbol}: quantity {quantity} is not a multiple of the amount step {rules.amount_step}",
        )
    if reduce_only:
        return quantity
    if quantity < rules.min_quantity:
        raise QuantityRejected(
            f"{rules.symbol}: quantity {quantity} is below the market minimum {rules.min_quantity}",
        )
    if price is not None and rules.min_notional and quantity * price < rules.min_notional:
        raise QuantityRejected(
            f"{rules.symbol}: notional {quantity * price} is below the market minimum {rules.min_notional}",
        )
    return quantity


def quantity_for_usd(usd: Decimal, price: Decimal, rules: MarketRules) -> Decimal:
    """The largest valid quantity whose notional at `price` does not exceed `usd`."""
    if not price.is_finite() or price <= 0:
        raise QuantityRejected(f"{rules.symbol}: no usable price ({price})")
    quantity = floor_to_step(usd / price, rules.amount_step)
    if quantity < rules.min_quantity:
        raise QuantityRejected(
            f"{rules.symbol}: ${usd} buys {usd / price:.8f} at {price}, below the minimum quantity "
            f"{rules.min_quantity}",
        )
    return validate_quantity(quantity, rules, price)


def quantities_differ(ours: Decimal, theirs: Decimal, step: Decimal) -> bool:
    """True when two quantities differ by at least one amount step.

    Both sides are multiples of the step, so any difference of a full step is a real one:
    closing our quantity when the exchange holds one step less would leave a remainder we can
    never close. Differences below a step are representation noise.
    """
    return abs(ours - theirs) >= step
