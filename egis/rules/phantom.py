"""Seed 000 §4: the detection rule for phantom SHORTs left by a close processed as an open.

A SHORT is erroneous when exchange = binance, side = short, status = open, and there exists a
CLOSED LONG of the same bot and symbol with
    |short.created_at - long.closed_at| < 3 seconds,
    short.entry_price == long.exit_price,
    short.size_usd == long.size_usd.
The short's quantity may be 0 or more. The set-based SQL in egis/db/maintenance.py encodes the
same conditions from the constants here; `reasons` explains one pair (for --debug), and the
tests check that both agree on every edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

EXCHANGE = "binanceusdm"
WINDOW = timedelta(seconds=3)


@dataclass(frozen=True)
class Candidate:
    id: int
    bot: str
    exchange: str
    symbol: str
    side: str
    status: str
    created_at: datetime
    entry_price: Decimal | None
    size_usd: Decimal


@dataclass(frozen=True)
class ClosedLong:
    id: int
    bot: str
    symbol: str
    side: str
    status: str
    closed_at: datetime | None
    exit_price: Decimal | None
    size_usd: Decimal


def reasons(short: Candidate, long: ClosedLong) -> list[str]:
    """Why this pair is NOT a phantom match; empty when it is one."""
    why = []
    if short.exchange != EXCHANGE:
        why.append(f"short is on {short.exchange}, not {EXCHANGE}")
    if short.side != "short" or short.status != "open":
        why.append(f"candidate is {short.side}/{short.status}, not an open short")
    if long.side != "long" or long.status != "closed":
        why.append(f"other position is {long.side}/{long.status}, not a closed long")
    if long.bot != short.bot:
        why.append(f"different bot ({long.bot})")
    if long.symbol != short.symbol:
        why.append(f"different symbol ({long.symbol})")
    if long.closed_at is None or abs(short.created_at - long.closed_at) >= WINDOW:
        gap = (
            "never closed"
            if long.closed_at is None
            else f"{abs(short.created_at - long.closed_at).total_seconds():.3f}s"
        )
        why.append(f"created {gap} from the long's close (needs < {WINDOW.total_seconds():.0f}s)")
    if short.entry_price is None or long.exit_price is None or short.entry_price != long.exit_price:
        why.append(f"entry {short.entry_price} != long exit {long.exit_price}")
    if short.size_usd != long.size_usd:
        why.append(f"size ${short.size_usd} != long size ${long.size_usd}")
    return why


def is_phantom(short: Candidate, long: ClosedLong) -> bool:
    return not reasons(short, long)
