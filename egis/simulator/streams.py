"""Private websocket streams of the simulator: open connections, event delivery, stream faults, listen keys.

Both venues push account events over a websocket (Binance USD-M user data stream, Bybit v5 private
stream). This module holds what they share: the registry of open connections, the delivery of events to
the connections of one API key in order, the stream faults the control API injects, and the clock task
that expires Binance listen keys and ends connections the venues would end. The venue front ends
(``binance_stream``, ``bybit_stream``) speak the wire protocols and turn fills into frames.

Delivery: every event of a fill is published once for (venue, API key); it goes to each open,
authenticated connection of that key that wants it (Bybit: subscribed to its topic). The counted faults
(skip, delay) count published events that had at least one recipient, so "skip the next 2 events"
means the next 2 events the client would have received. Each connection sends its events in
publication order from one sender task; a delayed event holds the events behind it (the venues
guarantee order per connection: "For one connection (one user data), the user data stream payloads
can guaranteed to be in order", Binance USD-M User Data Streams, Connect).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import secrets
import string
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from aiohttp import web

from egis.simulator.core import SimulatorCore

BINANCE = "binanceusdm"
BYBIT = "bybit"
STREAM_VENUES = (BINANCE, BYBIT)

HOUR_MS = 3_600_000
# "A User Data Stream listenKey is valid for 60 minutes after creation. Doing a PUT on a listenKey will
# extend its validity for 60 minutes ... Doing a POST on an account with an active listenKey will return
# the currently active listenKey and extend its validity for 60 minutes." (Binance USD-M docs, User Data
# Streams > Connect, https://developers.binance.com/docs/derivatives/usds-margined-futures/user-data-streams)
LISTEN_KEY_VALIDITY_MS = HOUR_MS
# "A single connection is only valid for 24 hours; expect to be disconnected at the 24 hour mark" (same page).
BINANCE_CONNECTION_LIFETIME_MS = 24 * HOUR_MS
# "In general, if there is no "ping-pong" and no stream data sent from server end, the connection will be
# cut off after 10 minutes." (bybit-exchange/docs docs/v5/websocket/wss-authentication.mdx, "Customise
# Private Connection Alive Time"; max_active_time is not simulated).
BYBIT_IDLE_CUTOFF_MS = 10 * 60_000
TICK_SECONDS = 0.1
CLOSE_TIMEOUT_SECONDS = 2.0

Payload = dict[str, Any]


class DropMode(StrEnum):
    """How the ``drop`` fault ends a connection.

    ABORT: the TCP connection is cut with no close frame (a network failure, a venue restart).
    CLOSE: the server sends a websocket close frame (code 1001, going away) and closes.
    """

    ABORT = "abort"
    CLOSE = "close"


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One frame of an account event; ``topic`` is the Bybit topic it belongs to (None for Binance)."""

    payload: Payload
    topic: str | None = None


@dataclass(slots=True)
class _Outgoing:
    payload: Payload
    due: float  # loop time before which it must not be sent (a delayed event)


@dataclass(eq=False)
class StreamConnection:
    """One open private websocket.

    ``api_key``: the account it streams (Binance: the listen key's, from the start; Bybit: after a
    successful ``auth``). ``expired``: Binance only, the listen key expired (no more events).
    ``silent_until``: loop time until which the connection neither sends events nor answers pings
    (``math.inf``: until cleared). Counters: ``sent`` events delivered, ``skipped`` events dropped by
    the skip fault, ``lost`` events dropped because the connection was silent or its key expired,
    ``replies`` answers to client requests (Bybit auth, subscribe, ping).
    """

    id: str
    venue: str
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    opened_ms: int
    api_key: str | None = None
    listen_key: str | None = None
    topics: set[str] = field(default_factory=set)
    expired: bool = False
    silent_until: float = 0.0
    last_activity_ms: int = 0
    sent: int = 0
    skipped: int = 0
    lost: int = 0
    replies: int = 0
    queue: asyncio.Queue[_Outgoing] = field(default_factory=asyncio.Queue)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sender: asyncio.Task[None] | None = None

    def silent(self, now: float) -> bool:
        """Whether the connection is under a ``silence`` fault at loop time ``now``."""
        return now < self.silent_until

    def as_json(self, now: float) -> Payload:
        return {
            "id": self.id,
            "venue": self.venue,
            "api_key": self.api_key,
            "listen_key": self.listen_key,
            "topics": sorted(self.topics),
            "opened_ms": self.opened_ms,
            "expired": self.expired,
            "silent": self.silent(now),
            "silent_for": None if not self.silent(now) else _remaining(self.silent_until, now),
            "sent": self.sent,
            "skipped": self.skipped,
            "lost": self.lost,
            "replies": self.replies,
            "queued": self.queue.qsize(),
        }


@dataclass(slots=True)
class _KeyFaults:
    """Counted faults pending for one (venue, API key)."""

    skip: int = 0
    delay: int = 0
    delay_seconds: float = 0.0
    refuse_auth: int = 0

    def pending(self) -> bool:
        return bool(self.skip or self.delay or self.refuse_auth)


class StreamHub:
    """Open private connections of one simulator, their delivery and their faults (see the module docstring)."""

    def __init__(self, core: SimulatorCore) -> None:
        self._core = core
        self._connections: dict[str, StreamConnection] = {}
        self._faults: dict[tuple[str, str], _KeyFaults] = {}
        self._ids = itertools.count(1)
        self._clock: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.listen_keys = ListenKeyBook(core, self)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, _: web.Application | None = None) -> None:
        """Start the clock task (listen-key expiry, connection lifetimes); an aiohttp ``on_startup`` hook."""
        if self._clock is None:
            self._clock = asyncio.create_task(self._run_clock())

    async def stop(self, _: web.Application | None = None) -> None:
        """Stop the clock task and close every connection; an aiohttp ``on_shutdown`` hook."""
        if self._clock is not None:
            self._clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock
            self._clock = None
        await self.drop(None, None, DropMode.CLOSE)

    async def reset(self) -> None:
        """Back to a fresh state: every connection closed, listen keys and stream faults forgotten."""
        await self.drop(None, None, DropMode.CLOSE)
        self._faults.clear()
        self.listen_keys.reset()

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run ``work`` in the background (kept referenced until done)."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run_clock(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self.listen_keys.expire_due()
            self._end_old_connections()

    def _end_old_connections(self) -> None:
        """Close (in the background) the connections the venues would end by now on the simulator clock."""
        now = self._core.now_ms()
        for conn in list(self._connections.values()):
            too_old = conn.venue == BINANCE and now - conn.opened_ms >= BINANCE_CONNECTION_LIFETIME_MS
            idle = conn.venue == BYBIT and now - conn.last_activity_ms >= BYBIT_IDLE_CUTOFF_MS
            if too_old or idle:
                self._connections.pop(conn.id, None)
                self.spawn(self._close(conn, DropMode.CLOSE))

    # ------------------------------------------------------------------ connections

    def open(
        self, venue: str, request: web.Request, ws: web.WebSocketResponse, *, api_key: str | None = None
    ) -> StreamConnection:
        """Register a connection just upgraded to a websocket and start its sender."""
        now = self._core.now_ms()
        conn_id = f"{_token(20)}-{next(self._ids)}"
        conn = StreamConnection(
            conn_id, venue, ws, request.transport, opened_ms=now, api_key=api_key, last_activity_ms=now
        )
        conn.sender = asyncio.create_task(self._send_loop(conn))
        self._connections[conn.id] = conn
        return conn

    async def closed(self, conn: StreamConnection) -> None:
        """Forget a connection whose socket ended."""
        self._connections.pop(conn.id, None)
        if conn.sender is not None:
            conn.sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await conn.sender

    def connections(self, venue: str | None = None, api_key: str | None = None) -> list[StreamConnection]:
        """Open connections, optionally of one venue and/or one API key."""
        return [c for c in self._connections.values() if venue in (None, c.venue) and api_key in (None, c.api_key)]

    async def reply(self, conn: StreamConnection, payload: Payload) -> bool:
        """Answer a client request (ack, pong) at once, unless the connection is silent; whether it was sent."""
        if conn.silent(_loop_time()) or conn.ws.closed:
            return False
        await self._write(conn, payload)
        conn.replies += 1
        return True

    async def pong(self, conn: StreamConnection, data: bytes) -> None:
        """Answer a protocol ping frame, unless the connection is silent."""
        if conn.silent(_loop_time()) or conn.ws.closed:
            return
        async with conn.lock:
            await conn.ws.pong(data)

    async def _write(self, conn: StreamConnection, payload: Payload) -> None:
        async with conn.lock:
            if not conn.ws.closed:
                await conn.ws.send_str(json.dumps(payload, separators=(",", ":")))
                conn.last_activity_ms = self._core.now_ms()

    # ------------------------------------------------------------------ events

    def publish(
        self,
        venue: str,
        api_key: str,
        events: Iterable[StreamEvent],
        wants: Callable[[StreamConnection, str | None], bool],
    ) -> None:
        """Queue account events of ``api_key`` for its open connections on ``venue``, in order.

        ``wants(connection, topic)`` says whether a connection receives an event (subscriptions).
        """
        faults = self._faults.get((venue, api_key))
        now = _loop_time()
        for event in events:
            recipients = [c for c in self.connections(venue, api_key) if wants(c, event.topic)]
            if not recipients:
                continue
            if faults is not None and faults.skip:
                faults.skip -= 1
                for conn in recipients:
                    conn.skipped += 1
                continue
            delay = 0.0
            if faults is not None and faults.delay:
                faults.delay -= 1
                delay = faults.delay_seconds
            for conn in recipients:
                if conn.expired or conn.silent(now):
                    conn.lost += 1
                else:
                    conn.queue.put_nowait(_Outgoing(event.payload, now + delay))

    async def _send_loop(self, conn: StreamConnection) -> None:
        while True:
            item = await conn.queue.get()
            wait = item.due - _loop_time()
            if wait > 0:
                await asyncio.sleep(wait)
            if conn.silent(_loop_time()):
                conn.lost += 1
                continue
            try:
                await self._write(conn, item.payload)
            except (ConnectionError, RuntimeError):
                conn.lost += 1
                continue
            conn.sent += 1

    # ------------------------------------------------------------------ faults

    async def drop(self, venue: str | None, api_key: str | None, mode: DropMode = DropMode.ABORT) -> int:
        """End the connections of ``api_key`` on ``venue`` (None: all); returns how many."""
        targets = self.connections(venue, api_key)
        await asyncio.gather(*(self._close(conn, mode) for conn in targets))
        return len(targets)

    async def close_where(self, predicate: Callable[[StreamConnection], bool]) -> int:
        """Close (with a close frame) every connection matching ``predicate``; returns how many."""
        targets = [c for c in self._connections.values() if predicate(c)]
        await asyncio.gather(*(self._close(conn, DropMode.CLOSE) for conn in targets))
        return len(targets)

    async def _close(self, conn: StreamConnection, mode: DropMode) -> None:
        self._connections.pop(conn.id, None)
        if mode is DropMode.CLOSE:
            try:
                # The close handshake waits for the client's close frame; a client that never answers is cut.
                await asyncio.wait_for(conn.ws.close(code=1001, message=b"going away"), CLOSE_TIMEOUT_SECONDS)
            except (TimeoutError, ConnectionError, RuntimeError):
                pass
            else:
                return
        if conn.transport is not None:
            conn.transport.abort()

    def silence(self, venue: str | None, api_key: str | None, seconds: float | None) -> int:
        """Make the open connections of ``api_key`` on ``venue`` (None: all) silent: no events, no answers
        to pings, for ``seconds`` (None: until cleared). Connections opened later are not affected."""
        until = math.inf if seconds is None else _loop_time() + seconds
        targets = self.connections(venue, api_key)
        for conn in targets:
            conn.silent_until = until
        return len(targets)

    def _key_faults(self, venue: str, api_key: str) -> _KeyFaults:
        return self._faults.setdefault((venue, api_key), _KeyFaults())

    def skip(self, venue: str, api_key: str, count: int) -> None:
        """Drop the next ``count`` events of ``api_key`` on ``venue`` (added to any skips pending)."""
        self._key_faults(venue, api_key).skip += count

    def delay(self, venue: str, api_key: str, count: int, seconds: float) -> None:
        """Hold each of the next ``count`` events of ``api_key`` on ``venue`` ``seconds`` before sending it."""
        faults = self._key_faults(venue, api_key)
        faults.delay, faults.delay_seconds = count, seconds

    def refuse_auth(self, venue: str, api_key: str, count: int) -> None:
        """Refuse the next ``count`` stream authentications of ``api_key`` (Bybit ``auth``, Binance listen-key
        creation) with the venue's error."""
        self._key_faults(venue, api_key).refuse_auth += count

    def take_auth_refusal(self, venue: str, api_key: str | None) -> bool:
        """Whether this authentication must be refused (one pending refusal is used up)."""
        faults = self._faults.get((venue, api_key or ""))
        if faults is None or not faults.refuse_auth:
            return False
        faults.refuse_auth -= 1
        return True

    def clear_faults(self, venue: str | None = None, api_key: str | None = None) -> int:
        """Lift silences and drop pending counted faults (of one venue and/or key); returns how many."""
        cleared = 0
        now = _loop_time()
        for conn in self.connections(venue, api_key):
            if conn.silent(now):
                conn.silent_until = 0.0
                cleared += 1
        for venue_key in [k for k in self._faults if venue in (None, k[0]) and api_key in (None, k[1])]:
            cleared += int(self._faults.pop(venue_key).pending())
        return cleared

    def state(self, api_key: str | None = None) -> Payload:
        """Open connections, pending counted faults and listen keys (of one API key, or all)."""
        now = _loop_time()
        faults = [
            {"venue": venue, "api_key": key} | _fault_counts(f)
            for (venue, key), f in self._faults.items()
            if f.pending() and api_key in (None, key)
        ]
        return {
            "connections": [c.as_json(now) for c in self.connections(None, api_key)],
            "faults": faults,
            "listen_keys": self.listen_keys.state(api_key),
        }


@dataclass(slots=True)
class ListenKey:
    """A Binance listen key: ``expires_ms`` on the simulator clock; ``expired`` once it ran out (or was
    expired by the control API), ``closed`` once DELETEd."""

    key: str
    api_key: str
    expires_ms: int
    expired: bool = False
    closed: bool = False

    @property
    def active(self) -> bool:
        return not (self.expired or self.closed)


class ListenKeyBook:
    """Binance USD-M listen keys, one per API key (see LISTEN_KEY_VALIDITY_MS for the rules)."""

    def __init__(self, core: SimulatorCore, hub: StreamHub) -> None:
        self._core = core
        self._hub = hub
        self._by_api_key: dict[str, ListenKey] = {}

    def reset(self) -> None:
        self._by_api_key.clear()

    def start(self, api_key: str) -> ListenKey:
        """POST: the active key extended by 60 minutes, or a new key."""
        current = self._by_api_key.get(api_key)
        now = self._core.now_ms()
        if current is not None and current.active and current.expires_ms > now:
            current.expires_ms = now + LISTEN_KEY_VALIDITY_MS
            return current
        # 64 alphanumerics like the documented examples ("pqia91ma19a5s61cv6a81va65sdf19v8a65a1a5s61cv6a81
        # va65sdf19v8a65a1", Start User Data Stream response example).
        key = ListenKey(_token(64), api_key, now + LISTEN_KEY_VALIDITY_MS)
        self._by_api_key[api_key] = key
        return key

    def keepalive(self, api_key: str) -> ListenKey | None:
        """PUT: the active key extended by 60 minutes; None if the account has none (-1125)."""
        current = self._active(api_key)
        if current is None:
            return None
        current.expires_ms = self._core.now_ms() + LISTEN_KEY_VALIDITY_MS
        return current

    def close(self, api_key: str) -> ListenKey | None:
        """DELETE: "will close the stream and invalidate the listenKey"; None if there was no active key.
        The key's connections get no more events at once and are closed in the background."""
        current = self._active(api_key)
        if current is None:
            return None
        current.closed = True
        for conn in self._hub.connections(BINANCE):
            if conn.listen_key == current.key:
                conn.expired = True
        self._hub.spawn(self._hub.close_where(lambda c: c.listen_key == current.key))
        return current

    def lookup(self, listen_key: str) -> ListenKey | None:
        """The active key ``listen_key`` (None if unknown, expired or closed)."""
        for key in self._by_api_key.values():
            if key.key == listen_key:
                return key if key.active and key.expires_ms > self._core.now_ms() else None
        return None

    def _active(self, api_key: str) -> ListenKey | None:
        current = self._by_api_key.get(api_key)
        if current is None or not current.active or current.expires_ms <= self._core.now_ms():
            return None
        return current

    def expire_now(self, api_key: str) -> ListenKey | None:
        """Expire the account's active key at once (the control API's ``expire_listen_key``)."""
        current = self._active(api_key)
        if current is not None:
            self._expire(current)
        return current

    def expire_due(self) -> None:
        """Expire every key whose 60 minutes are over on the simulator clock."""
        now = self._core.now_ms()
        for key in self._by_api_key.values():
            if key.active and key.expires_ms <= now:
                self._expire(key)

    def _expire(self, key: ListenKey) -> None:
        """Push ``listenKeyExpired`` on the key's connections, which then carry no more events but stay open.

        "When the listenKey used for the user data stream turns expired, this event will be pushed.
        This event is not related to the websocket disconnection. ... No more user data event will be
        updated after this event received until a new valid listenKey used." Payload ``{"e":
        "listenKeyExpired", "E": "1736996475556", "listenKey": "..."}`` with ``E`` a string (USD-M docs,
        User Data Streams > Event: User Data Stream Expired; a real frame with a string ``E`` is quoted
        in ccxt/go-binance#510).
        """
        key.expired = True
        payload = {"e": "listenKeyExpired", "E": str(self._core.now_ms()), "listenKey": key.key}
        for conn in self._hub.connections(BINANCE):
            if conn.listen_key == key.key and not conn.expired:
                conn.expired = True
                if not conn.silent(_loop_time()):
                    conn.queue.put_nowait(_Outgoing(payload, _loop_time()))

    def state(self, api_key: str | None = None) -> list[Payload]:
        now = self._core.now_ms()
        return [
            {
                "api_key": k.api_key,
                "listen_key": k.key,
                "expires_ms": k.expires_ms,
                "active": k.active and k.expires_ms > now,
                "expired": k.expired,
                "closed": k.closed,
            }
            for k in self._by_api_key.values()
            if api_key in (None, k.api_key)
        ]


def _fault_counts(faults: _KeyFaults) -> Payload:
    return {
        "skip": faults.skip,
        "delay": faults.delay,
        "delay_seconds": faults.delay_seconds,
        "refuse_auth": faults.refuse_auth,
    }


def _remaining(until: float, now: float) -> float | None:
    return None if math.isinf(until) else round(until - now, 3)


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


_ALPHANUMERIC = string.ascii_letters + string.digits


def _token(length: int) -> str:
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(length))
