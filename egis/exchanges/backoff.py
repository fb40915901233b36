"""One back-off per exchange account, shared by every activity and every worker process.

When a venue throttles or bans us, it says for how long: Binance answers HTTP 429 (code -1003)
with `Retry-After`, and an IP that keeps calling during that back-off gets HTTP 418 with
`Retry-After` (a ban, from 2 minutes up to 3 days) (Binance USD-M docs, "General Info: Limits");
Bybit answers retCode 10006 at HTTP 200 with `X-Bapi-Limit-Reset-Timestamp`, and HTTP 403
("access too frequent") when an IP exceeds its limit, lifted after at least 10 minutes
(bybit-exchange/docs docs/v5/rate-limit.mdx). Calling during a ban extends it, so no request
may go out until it ends, from ANY worker: the deadline lives in PostgreSQL
(`exchange_backoffs`) and a call reads it (one indexed read) before it is sent, unless this
process read it less than SHARED_READ_SECONDS ago (the calls of one activity share one read; a
back-off set here is known here at once).

Some limits are the IP's, not the account's: Binance counts request weight per IP (429 with
-1003, then 418 bans) and Bybit's HTTP 403 is an IP ban. Every account of that venue calls from
the same address, so such an answer stops them all: it is recorded under the account
`*<venue endpoint>` (IP_WIDE followed by `live`, `testnet` or the simulator's url), which every
account of that exchange and endpoint reads beside its own row, so the testnet's limits never
stop live accounts. Per-account limits (Binance -1015 order counts, Bybit 10006 per UID) stay
with the account. `egis.exchanges.ccxt_gateway.throttle_of` reads both from an answer, for the
gateway's calls and the private streams' connects alike.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from egis import metrics
from egis.db.schema import exchange_backoffs

DEFAULT_SECONDS = {
    429: 30.0,  # Binance 429 without a Retry-After header: back off, don't spam (the docs' wording)
    418: 120.0,  # Binance's first IP ban lasts 2 minutes
    403: float(os.environ.get("EGIS_BYBIT_IP_BAN_SECONDS", "600")),  # Bybit: "wait at least 10 minutes"
    200: 1.0,  # Bybit 10006 without a reset timestamp: its limits are per second
}
"""Used when the answer carries no Retry-After / reset time. Bybit's IP ban says nothing about its
length beyond "at least 10 minutes"; EGIS_BYBIT_IP_BAN_SECONDS changes that wait (the chaos runner
shortens it, its simulated bans last seconds)."""
SHARED_READ_SECONDS = 0.25
"""How long a read of the shared deadline stands for this process: a back-off another worker
records is seen within this, about the time one exchange request takes anyway."""
MAX_SECONDS = 3 * 24 * 3600.0  # Binance's longest ban: 3 days
IP_WIDE = "*"
"""How the `exchange_backoffs` account of a back-off that holds every account of a venue endpoint
begins (`*` + the endpoint); account names cannot begin with it."""


def ip_wide(exchange: str, status: int | None, code: str | None) -> bool:
    """Whether a throttling answer limits the IP (every account of the venue) rather than one
    account: Binance 418 (an IP ban) and 429 with -1003 (the IP's request weight; -1015, too many
    orders, is the account's) (Binance USD-M docs, General Info > LIMITS, and Error Codes); Bybit
    HTTP 403 (the IP's limit, bybit-exchange/docs docs/v5/rate-limit.mdx)."""
    if exchange == "binanceusdm":
        return status == 418 or (status == 429 and code != "-1015")
    if exchange == "bybit":
        return status == 403
    return False


def retry_after(status: int | None, headers: Mapping[str, str] | None, now_ms: float | None = None) -> float:
    """Seconds to wait after a throttling answer, from the venue's own headers."""
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    now_ms = time.time() * 1000 if now_ms is None else now_ms
    seconds: float | None = None
    if "retry-after" in headers:
        try:
            seconds = float(headers["retry-after"])
        except ValueError:
            seconds = None
    elif "x-bapi-limit-reset-timestamp" in headers:
        try:
            seconds = (float(headers["x-bapi-limit-reset-timestamp"]) - now_ms) / 1000
        except ValueError:
            seconds = None
    if seconds is None or seconds <= 0:
        seconds = DEFAULT_SECONDS.get(status or 0, DEFAULT_SECONDS[429])
    return min(seconds, MAX_SECONDS)


class Backoff:
    """The back-off of one account. Without an engine (a gateway built outside a worker) it is
    kept in memory only, and an IP-wide back-off then holds this account alone."""

    def __init__(self, exchange: str, account: str, engine: AsyncEngine | None = None, venue: str = "live") -> None:
        self.exchange = exchange
        self.account = account
        self.engine = engine
        self.ip_row = (IP_WIDE + venue)[:200]  # the account of this venue endpoint's IP-wide row
        self._until = 0.0  # epoch seconds
        self._read_at = -SHARED_READ_SECONDS  # monotonic time of the last read of the shared deadline

    async def remaining(self) -> float:
        """Seconds until requests may go out again (0: now). Reads the shared deadline; if the
        database cannot be read, the last one known here still holds."""
        if self.engine is not None and time.monotonic() - self._read_at >= SHARED_READ_SECONDS:
            self._read_at = time.monotonic()
            try:
                async with self.engine.connect() as conn:
                    until = (
                        await conn.execute(
                            select(func.max(exchange_backoffs.c.until)).where(
                                exchange_backoffs.c.exchange == self.exchange,
                                exchange_backoffs.c.account.in_([self.account, self.ip_row]),
                            )
                        )
                    ).scalar_one_or_none()
                if until is not None:
                    self._until = max(self._until, until.timestamp())
            except Exception:
                pass
        left = max(0.0, self._until - time.time())
        metrics.EXCHANGE_BACKOFF_SECONDS.labels(self.exchange, self.account).set(left)
        return left

    async def impose(self, seconds: float, reason: str, *, ip: bool = False) -> None:
        """No request to this account (ip: to any account of the exchange) for `seconds` (a
        longer deadline already set stays)."""
        until = time.time() + seconds
        self._until = max(self._until, until)
        metrics.EXCHANGE_BACKOFF_SECONDS.labels(self.exchange, self.account).set(max(0.0, self._until - time.time()))
        metrics.EXCHANGE_BACKOFFS.labels(self.exchange, self.account).inc()
        if self.engine is None:
            return
        at = datetime.fromtimestamp(until, UTC)
        statement = pg_insert(exchange_backoffs).values(
            exchange=self.exchange, account=self.ip_row if ip else self.account, until=at, reason=reason[:300]
        )
        statement = statement.on_conflict_do_update(
            index_elements=[exchange_backoffs.c.exchange, exchange_backoffs.c.account],
            set_={
                "until": func.greatest(exchange_backoffs.c.until, statement.excluded.until),
                "reason": statement.excluded.reason,
                "updated_at": func.now(),
            },
        )
        async with self.engine.begin() as conn:
            await conn.execute(statement)


def until_text(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat(timespec="seconds")
