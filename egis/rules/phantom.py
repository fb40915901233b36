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


# ---------------------------------------------------------------- is a match really a phantom?
# The seed's rule was written for legacy rows: a SHORT created by a close processed as an open.
# It cannot tell such a row from a real short opened right after a long was closed (a bot that
# reverses at the same price and size matches it exactly). A match is therefore repaired only
# when it is proven not real:
#   - a position Egis opened itself through a filled OPEN order cannot be a phantom: only OPEN
#     orders create positions (egis.rules.intent) and the database refuses anything else;
#   - any other match is checked against the exchange account: if the account holds a short
#     of that symbol that no other live Egis position accounts for, the match is left alone.
REAL = "real_position"
EXCHANGE_HOLDS = "exchange_holds"
UNVERIFIED = "unverified"
PHANTOM = "phantom"


@dataclass(frozen=True)
class Held:
    """What the exchange account holds in one symbol, on one side."""

    symbol: str
    side: str
    quantity: Decimal


@dataclass(frozen=True)
class AccountEvidence:
    """One read of an exchange account's open positions (or why it could not be read)."""

    positions: tuple[Held, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class Verdict:
    kind: str  # PHANTOM (repair) | REAL | EXCHANGE_HOLDS | UNVERIFIED (leave alone)
    reason: str

    @property
    def repair(self) -> bool:
        return self.kind == PHANTOM


def verdict(
    symbol: str,
    opened_by: str | None,
    evidence: AccountEvidence | None,
    others_short: Decimal,
) -> Verdict:
    """Decide one seed-rule match. `opened_by`: the client order id of the position's filled OPEN
    order, if any; `evidence`: the account's positions read this run (None: not read);
    `others_short`: the open short quantity of the account's OTHER live Egis positions in
    `symbol` (what already accounts for a short the exchange holds)."""
    if opened_by is not None:
        return Verdict(REAL, f"matches the seed rule, but is a real position opened by order {opened_by}")
    if evidence is None:
        return Verdict(UNVERIFIED, "matches the seed rule; the exchange account was not read, so it is left alone")
    if evidence.error is not None:
        return Verdict(
            UNVERIFIED, f"matches the seed rule; the exchange could not be read ({evidence.error}): left alone"
        )
    held = sum((p.quantity for p in evidence.positions if p.symbol == symbol and p.side == "short"), Decimal(0))
    unaccounted = held - others_short
    if unaccounted > 0:
        return Verdict(
            EXCHANGE_HOLDS,
            f"matches the seed rule, but the exchange holds a {symbol} short of {unaccounted:f} "
            "that no other live position accounts for: left alone",
        )
    return Verdict(PHANTOM, f"phantom: the exchange holds no unaccounted {symbol} short")
