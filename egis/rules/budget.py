"""The budget rule (seed 000 §5-7).

available = bot budget - Σ size_usd of the bot's positions in opening | open | closing,
read from the internal `positions` table only. Amounts are Decimals quantized to cents, so
rounding can never produce the seed's "Available: $-0.01".

The store calls `check_reservation` while holding a row lock on the bot, so concurrent opens
are serialized and can never overspend.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import ROUND_DOWN, Decimal

from egis.errors import BudgetExceeded, InvalidInput

CENT = Decimal("0.01")


def to_cents(amount: Decimal) -> Decimal:
    """Quantize a USD amount to cents, rounding toward zero (never reserve more than asked)."""
    if not amount.is_finite():
        raise InvalidInput(f"amount must be finite, got {amount}")
    return amount.quantize(CENT, rounding=ROUND_DOWN)


def reserved(sizes: Iterable[Decimal]) -> Decimal:
    """Total USD reserved by the given position sizes (each already in cents)."""
    return sum((to_cents(s) for s in sizes), Decimal("0.00"))


def available(budget_usd: Decimal, reserved_usd: Decimal) -> Decimal:
    return to_cents(budget_usd) - to_cents(reserved_usd)


def check_reservation(bot: str, budget_usd: Decimal, reserved_usd: Decimal, requested_usd: Decimal) -> Decimal:
    """Return the available budget after reserving `requested_usd`, or raise BudgetExceeded."""
    requested = to_cents(requested_usd)
    if requested <= 0:
        raise InvalidInput(f"requested amount must be positive, got {requested_usd}")
    free = available(budget_usd, reserved_usd)
    if requested > free:
        raise BudgetExceeded(bot=bot, requested=requested, available=max(free, Decimal("0.00")))
    return free - requested
