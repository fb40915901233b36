"""An exchange account's private stream (websockets) through the real ccxt.pro client.

`AccountStream` connects, and turns every private message into a small typed event, as it
arrives: a position update (the account's size in a symbol, flat included) and an order update
(cumulative fill of one order, by client order id). It reads the raw messages (a hook on
ccxt.pro's `handle_message`) rather than the `watch_*` caches, so an event is handled when it
arrives, not when the next `watch_*` call happens to be pending.

What ccxt.pro 4.5.90 gets wrong here, and what this module does about it (each has a test in
tests/test_streams.py, so an upgrade shows whether the workaround is still needed):
- Binance's listenKey keep-alive reschedules itself only if it finds the client, which it never
  does (ccxt/pro/binance.py keep_alive_listen_key: `safe_dict(clients, i)` on Client objects):
  one PUT, then none, and a quiet account's key dies after about 80 minutes. We PUT the key
  ourselves every KEEPALIVE_SECONDS.
- Binance's `listenKeyExpired` event is not in ccxt's dispatch table (handle_message), so the
  stream goes silent with no error (ccxt issue #6760). We see it in the raw messages and
  reconnect with a new key.
- `watch_positions` (and `watch_orders` on Binance) fetch a REST positions snapshot first; if
  that first call fails, `watch_positions` hangs forever. The snapshot is turned off: the
  caller diffs the account by REST after every (re)connect anyway (the venues replay nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import ccxt.pro as ccxt_pro
from ccxt.base.errors import BaseError

from egis.exchanges.accounts import AccountConfig
from egis.exchanges.ccxt_gateway import Throttle, new_client, responses_seen, throttle_of
from egis.models import Exchange, Side
from egis.redact import redact, register

KEEPALIVE_SECONDS = 30 * 60.0
"""Binance: "Keepalive a user data stream to prevent a time out. User data streams will close after
60 minutes. It's recommended to send a ping about every 60 minutes" (USD-M docs, Keepalive User
Data Stream); peers PUT every 30 minutes (hummingbot, nautilus_trader)."""


@dataclass(frozen=True)
class PositionUpdate:
    """The account's position in `symbol` after an event. `side` None with quantity 0: flat."""

    symbol: str
    side: Side | None
    quantity: Decimal
    at_ms: int


@dataclass(frozen=True)
class OrderUpdate:
    """An order's cumulative fill, as the venue pushed it."""

    symbol: str
    client_order_id: str
    exchange_order_id: str | None
    status: str
    filled: Decimal
    average_price: Decimal | None
    at_ms: int


Event = PositionUpdate | OrderUpdate


class StreamLost(Exception):
    """The stream ended (closed, expired key, silent, refused): the caller reconnects and gap-fills.
    `throttle`: the venue throttled or banned the account or its IP while connecting (how long to
    stay away, and whether every account of the venue must)."""

    def __init__(self, message: str, throttle: Throttle | None = None) -> None:
        super().__init__(message)
        self.throttle = throttle


def _dec(value: Any) -> Decimal:
    try:
        return Decimal(str(value)) if value not in (None, "") else Decimal(0)
    except ArithmeticError:
        return Decimal(0)


_LISTEN_KEY = re.compile(r"(listenKey[=/:\s\"']+)[A-Za-z0-9]{16,}")


def scrub(text: str) -> str:
    """An error text with any listen key (they appear in stream URLs) and registered secret masked."""
    return redact(_LISTEN_KEY.sub(r"\1***", text))


def _connected(client: Any) -> bool:
    future = getattr(client, "connected", None)
    return bool(future is not None and future.done() and not future.exception())


def parse_binance(message: Any) -> tuple[list[Event], bool]:
    """(events, key expired) from one Binance USD-M user-data message (USD-M docs, "User Data
    Streams": ORDER_TRADE_UPDATE, ACCOUNT_UPDATE, listenKeyExpired)."""
    if not isinstance(message, dict):
        return [], False
    kind = message.get("e")
    at = int(message.get("E") or time.time() * 1000)
    if kind == "listenKeyExpired":
        return [], True
    if kind == "ORDER_TRADE_UPDATE":
        o = message.get("o") or {}
        filled = _dec(o.get("z"))
        average = _dec(o.get("ap"))
        return [
            OrderUpdate(
                symbol=str(o.get("s", "")),
                client_order_id=str(o.get("c", "")),
                exchange_order_id=str(o["i"]) if o.get("i") is not None else None,
                status=str(o.get("X", "")),
                filled=filled,
                average_price=average if filled > 0 and average > 0 else None,
                at_ms=at,
            )
        ], False
    if kind == "ACCOUNT_UPDATE":
        events: list[Event] = []
        for p in (message.get("a") or {}).get("P") or []:
            amount = _dec(p.get("pa"))
            hedge = {"LONG": Side.LONG, "SHORT": Side.SHORT}.get(str(p.get("ps", "BOTH")).upper())
            side = hedge or (Side.LONG if amount > 0 else Side.SHORT if amount < 0 else None)
            events.append(PositionUpdate(str(p.get("s", "")), side, abs(amount), at))
        return events, False
    return [], False


def parse_bybit(message: Any) -> list[Event]:
    """Events from one Bybit v5 private message (docs/v5/websocket/private/position.mdx,
    order.mdx): `{"topic", "creationTime", "data": [...]}`."""
    if not isinstance(message, dict):
        return []
    topic = message.get("topic")
    at = int(message.get("creationTime") or time.time() * 1000)
    rows = message.get("data") or []
    events: list[Event] = []
    if topic == "position":
        for row in rows:
            if row.get("category") not in (None, "linear"):
                continue
            size = _dec(row.get("size"))
            side = {"Buy": Side.LONG, "Sell": Side.SHORT}.get(str(row.get("side", "")))
            events.append(PositionUpdate(str(row.get("symbol", "")), side if size > 0 else None, size, at))
    elif topic == "order":
        for row in rows:
            if row.get("category") not in (None, "linear"):
                continue
            filled = _dec(row.get("cumExecQty"))
            average = _dec(row.get("avgPrice"))
            events.append(
                OrderUpdate(
                    symbol=str(row.get("symbol", "")),
                    client_order_id=str(row.get("orderLinkId", "")),
                    exchange_order_id=row.get("orderId"),
                    status=str(row.get("orderStatus", "")),
                    filled=filled,
                    average_price=average if filled > 0 and average > 0 else None,
                    at_ms=int(row.get("updatedTime") or at),
                )
            )
    return events


class AccountStream:
    """One connection (with its keep-alive) to one account's private stream. `events()` yields
    events until the stream is lost, then raises StreamLost; build a new one to reconnect."""

    def __init__(self, exchange: Exchange, config: AccountConfig) -> None:
        if exchange not in (Exchange.BINANCEUSDM, Exchange.BYBIT):
            raise ValueError(f"no private stream for {exchange}")
        self.exchange = exchange
        self._ex = new_client(ccxt_pro, exchange, config)  # the gateway's options, the streaming client
        # the positions snapshot hangs forever when its first REST call fails (ccxt.pro): off;
        # the caller diffs the account by REST after every (re)connect instead
        self._ex.options["watchPositions"] = {
            **self._ex.options.get("watchPositions", {}),
            "fetchPositionsSnapshot": False,
            "awaitPositionsSnapshot": False,
        }
        self._queue: asyncio.Queue[Event | StreamLost] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.connected_at: float | None = None
        self.last_message_at: float | None = None
        self._hook_messages()

    def _hook_messages(self) -> None:
        original: Callable[..., Any] = self._ex.handle_message

        def handle_message(client: Any, message: Any) -> Any:
            self.last_message_at = time.monotonic()
            try:
                if self.exchange is Exchange.BINANCEUSDM:
                    events, expired = parse_binance(message)
                    if expired:  # ccxt ignores this event: the stream would just go silent
                        self._queue.put_nowait(StreamLost("listenKeyExpired: the venue ended the stream"))
                else:
                    events = parse_bybit(message)
                for event in events:
                    self._queue.put_nowait(event)
            finally:
                return original(client, message)  # noqa: B012 - ccxt must still see every message

        self._ex.handle_message = handle_message  # type: ignore[method-assign]

    async def start(self, timeout: float = 20.0) -> None:
        """Connect, authenticate and subscribe; returns once the stream is up (or raises StreamLost)."""
        with responses_seen() as seen:
            try:
                await asyncio.wait_for(self._start(), timeout)
            except (BaseError, OSError, TimeoutError) as exc:
                status, headers = seen[-1] if seen else (None, None)
                raise StreamLost(
                    scrub(f"could not connect: {type(exc).__name__}: {str(exc)[:300]}"),
                    throttle_of(self.exchange, exc, status, headers),
                ) from None

    async def _start(self) -> None:
        await self._ex.load_markets()
        if self.exchange is Exchange.BYBIT:
            # authenticate first, so a refused auth is an error here, not a watcher hanging for good
            url = self._ex.get_url_by_market_type(None, True, "watchOrders", {})
            if asyncio.iscoroutine(url):
                url = await url
            await self._ex.authenticate(url)
            watchers = [self._ex.watch_orders, self._ex.watch_positions, self._ex.watch_my_trades]
        else:
            await self._ex.authenticate()  # POST /fapi/v1/listenKey
            register((self._ex.options.get("linear") or {}).get("listenKey"))  # a secret too: masked in logs
            watchers = [self._ex.watch_orders]
            self._tasks.append(asyncio.create_task(self._keep_alive()))
        failed = asyncio.Event()
        for watch in watchers:  # one subscription per topic (Bybit docs/v5/websocket/private)
            self._tasks.append(asyncio.create_task(self._watch(watch, failed)))
        while not any(_connected(client) for client in self._ex.clients.values() if hasattr(client, "connected")):
            if failed.is_set():
                raise StreamLost(self._failure or "the stream failed while connecting")
            await asyncio.sleep(0.01)
        self.connected_at = time.monotonic()

    _failure: str | None = None

    async def _watch(self, watch: Callable[..., Any], failed: asyncio.Event) -> None:
        while True:
            try:
                await watch()
            except asyncio.CancelledError:
                raise
            except BaseError as exc:
                self._failure = scrub(f"{type(exc).__name__}: {str(exc)[:300]}")
                failed.set()
                self._queue.put_nowait(StreamLost(self._failure))
                return
            except Exception as exc:
                self._failure = scrub(f"{type(exc).__name__}: {str(exc)[:300]}")
                failed.set()
                self._queue.put_nowait(StreamLost(self._failure))
                return

    async def _keep_alive(self) -> None:
        """Binance: PUT the listenKey every 30 minutes (ccxt's own keep-alive runs once)."""
        while True:
            await asyncio.sleep(KEEPALIVE_SECONDS)
            await self.keep_alive()

    async def keep_alive(self) -> None:
        key = (self._ex.options.get("linear") or {}).get("listenKey")
        try:
            await self._ex.fapiPrivatePutListenKey({"listenKey": key} if key else {})
        except BaseError as exc:  # the key is gone: a new stream needs a new key
            self._queue.put_nowait(StreamLost(scrub(f"listenKey keep-alive refused: {str(exc)[:300]}")))

    async def events(self, idle: float) -> AsyncIterator[Event | None]:
        """Yield events as they arrive; None after `idle` seconds without one (a silence tick)."""
        while True:
            try:
                item = await asyncio.wait_for(self._queue.get(), idle)
            except TimeoutError:
                yield None
                continue
            if isinstance(item, StreamLost):
                raise item
            yield item

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self._ex.close()
