"""Idempotent order submission that does not lean on the venue.

Every order carries our client order id, but the venues do not all guarantee that an id is used
once: Binance refuses a duplicate `newClientOrderId` only among OPEN orders, so the resend of a
market order whose first attempt already filled would be ACCEPTED as a second order (Binance
USD-M "New Order" docs; no record of -4116 for a filled id). And a look-up by client id can
miss an order that exists: Bybit's `/v5/order/history` is asynchronous ("may delay") and
`/v5/order/realtime` keeps only the last 500 closed orders (bybit-exchange/docs
docs/v5/order/open-order.mdx, order-list.mdx). So:

- an order that was sent before is never sent again until a look-up proves it absent;
- "not found" proves absence only when the last send was refused outright (the venue answered
  with an error that means "not accepted": a rate limit, a clock refusal), or once the venue's
  look-up lag window has passed since the last send;
- an order found but not filled yet (Binance may answer a MARKET order `NEW` with
  `executedQty` 0) is waited for, never recorded as a final zero fill;
- an order found final with nothing filled (canceled, rejected, expired) is a refusal: its
  client id is spent (Bybit keeps `orderLinkId` unique for good).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from egis.models import ErrorClass, Exchange

LOOKUP_LAG = {
    # Bybit: history "may delay" and realtime keeps only the last 500 closed orders; ccxt itself
    # polls 20 x 0.1 s before reporting an order it cannot see yet. 30 s is well beyond that.
    Exchange.BYBIT: timedelta(seconds=30),
    # Binance answers GET /fapi/v1/order from the matching engine's order store at once; a short
    # window still covers a request that is in flight when the look-up runs.
    Exchange.BINANCEUSDM: timedelta(seconds=5),
    # The paper exchange is our own database, written in the same transaction as the order.
    Exchange.PAPER: timedelta(0),
}
"""How long after a send a "not found" may still be the venue's lag rather than absence."""

SETTLED = frozenset({"filled", "partially_filled"})
FINAL_UNFILLED = frozenset({"canceled", "rejected"})


class Step(StrEnum):
    SEND = "send"  # nothing of ours is (or can be) on the venue: send it
    RECORD = "record"  # the venue holds a fill for it: record that, send nothing
    WAIT = "wait"  # it may exist or fill yet: look again later, send nothing
    REFUSED = "refused"  # the venue ended it with nothing filled: a refusal, its client id is spent


@dataclass(frozen=True)
class Found:
    """What a look-up by client id returned (None when it found nothing)."""

    status: str  # filled | partially_filled | open | canceled | rejected
    filled: bool


def next_step(
    exchange: Exchange,
    submissions: int,
    last_error: ErrorClass | None,
    found: Found | None,
    since_last_send: timedelta | None,
) -> Step:
    """What to do with an order before (re)sending it. `last_error` is the class of the last
    send's error (TRANSIENT: refused outright, so not accepted); `since_last_send` is how long ago
    the last send was made (None: unknown, treated as just now)."""
    if submissions == 0:
        return Step.SEND
    if found is not None:
        if found.filled:
            return Step.RECORD
        if found.status in FINAL_UNFILLED:
            return Step.REFUSED
        return Step.WAIT  # accepted, not filled yet (NEW / 0)
    if last_error is ErrorClass.TRANSIENT:
        return Step.SEND  # the venue said no to the last send: nothing to find
    if since_last_send is not None and since_last_send >= LOOKUP_LAG[Exchange(exchange)]:
        return Step.SEND
    return Step.WAIT


def after_send(filled: bool) -> Step:
    """A send was answered without an error: a fill is recorded; an acceptance with nothing
    filled yet (Binance `NEW` / 0, or a Bybit order not visible after ccxt's polling) is looked
    up again, never recorded as a final zero fill."""
    return Step.RECORD if filled else Step.WAIT
