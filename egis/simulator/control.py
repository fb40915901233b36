"""Async client of the simulator's control API (``/_sim/...``), for tests, demos and benchmarks.

Usage::

    async with SimulatorControl(server.base_url) as sim:
        await sim.set_price("BTCUSDT", Decimal("61000"))
        await sim.add_fault("POST /fapi/v1/order", "accept_then_timeout", seconds=2)

Answers are plain dicts and lists; money and quantity fields are parsed back into Decimals.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from types import TracebackType
from typing import Any

import aiohttp

DECIMAL_FIELDS = frozenset(
    {
        "avg_price",
        "balance",
        "closed_qty",
        "entry_price",
        "executed_qty",
        "fee",
        "fee_rate",
        "leverage",
        "mark_price",
        "price",
        "quantity",
        "realized_pnl",
        "starting_balance",
        "unrealized_pnl",
    }
)
# Raw request parameters in the request log stay exactly as received.
_RAW_FIELDS = frozenset({"query", "body"})


class SimulatorControlError(Exception):
    """The simulator refused a control request (HTTP 400) or answered unexpectedly."""


class SimulatorControl:
    """Client of one simulator's control API; use as ``async with SimulatorControl(url) as sim``."""

    def __init__(self, base_url: str) -> None:
        self._base_url = base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    @property
    def base_url(self) -> str:
        """The simulator's base URL (what ccxt and account files point at)."""
        return self._base_url

    async def __aenter__(self) -> SimulatorControl:
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ market and accounts

    async def set_price(self, symbol: str, price: Decimal | str) -> dict[str, Any]:
        """Move the mark price of ``symbol`` (fills and valuations use it)."""
        return await self._call("POST", "price", {"symbol": symbol, "price": str(price)})

    async def set_balance(self, api_key: str, balance: Decimal | str) -> dict[str, Any]:
        """Overwrite the USDT wallet balance of the account of ``api_key`` (created if new)."""
        return await self._call("POST", "balance", {"api_key": api_key, "balance": str(balance)})

    async def settings(self, **changes: Any) -> dict[str, Any]:
        """Change the given settings and return them all (no argument: just read them).

        Settings (defaults: what the real venues do; see ``egis.simulator.core.Settings``):
        ``bybit_reduce_only_code`` (110017 | 170131), ``bybit_reduce_only_min_notional_exempt`` (True),
        ``bybit_reduce_only_min_qty_exempt`` (False),
        ``binance_reject_reused_client_id`` (False), ``binance_market_new_answer`` (False),
        ``bybit_realtime_closed_cap`` (500), ``bybit_history_delay_ms`` (500), ``rate_limit_headers`` (True: off
        drops the venues' rate-limit headers, for the selftest's tests), ``check_signatures`` (True),
        ``clock_offset_ms`` (0), ``binance_weight_limit`` (2400), ``binance_order_limit_10s`` (300),
        ``binance_order_limit_1m`` (1200), ``binance_ban_seconds`` (120), ``bybit_ip_limit`` (600 per 5 s),
        ``bybit_ip_ban_seconds`` (600), ``bybit_endpoint_limit`` (0: each endpoint's documented limit),
        ``fee_rate`` (0), ``starting_balance`` (10000).
        """
        body = {k: str(v) if isinstance(v, Decimal) else v for k, v in changes.items() if v is not None}
        return await self._call("POST", "settings", body)

    async def reset(self) -> None:
        """Back to a fresh simulator: default prices and settings, no accounts, logs, faults or bans, every
        private stream connection closed, no listen keys, no stream faults.

        Registered API keys stay registered."""
        await self._call("POST", "reset", {})

    async def add_api_keys(self, keys: Mapping[str, str]) -> list[str]:
        """Accept these API keys (key -> secret) on the private endpoints; returns the keys registered.

        Unknown keys are refused like the venues do (Binance -2015, Bybit 10003), and every signed request
        is checked against its key's secret."""
        answer = await self._call("POST", "api_keys", {"keys": dict(keys)})
        return list(answer["registered"])

    async def remove_api_key(self, api_key: str) -> bool:
        """Refuse ``api_key`` from now on; whether it was registered."""
        return bool((await self._call("DELETE", "api_keys", {"api_key": api_key}))["removed"])

    async def api_keys(self) -> list[str]:
        """The registered API keys (never their secrets)."""
        return list(await self._call("GET", "api_keys"))

    async def set_position_mode(self, api_key: str, hedge: bool, symbol: str | None = None) -> list[str]:
        """Hedge mode on or off for ``symbol``, or the whole account (symbols with a position keep their mode);
        returns the symbols switched. Same effect as the venues' own endpoints (Binance
        ``POST /fapi/v1/positionSide/dual``, Bybit ``POST /v5/position/switch-mode``)."""
        body: dict[str, Any] = {"api_key": api_key, "hedge": hedge}
        if symbol is not None:
            body["symbol"] = symbol
        return list((await self._call("POST", "position_mode", body))["switched"])

    # ------------------------------------------------------------------ exchange-side actions

    async def close_position(
        self, api_key: str, symbol: str, price: Decimal | str | None = None, *, position_side: str | None = None
    ) -> dict[str, Any]:
        """Close the whole position on the exchange side (stop, manual close in the UI: an ordinary trade);
        returns ``{"order": ..., "trade": ...}``. ``position_side`` (LONG/SHORT) only when both hedge-mode
        sides are open."""
        return await self._exchange_action("close_position", api_key, symbol, price, None, position_side)

    async def reduce_position(
        self,
        api_key: str,
        symbol: str,
        quantity: Decimal | str,
        price: Decimal | str | None = None,
        *,
        position_side: str | None = None,
    ) -> dict[str, Any]:
        """Reduce the position by ``quantity`` on the exchange side; returns ``{"order", "trade"}``."""
        return await self._exchange_action("reduce_position", api_key, symbol, price, quantity, position_side)

    async def liquidate(
        self, api_key: str, symbol: str, price: Decimal | str | None = None, *, position_side: str | None = None
    ) -> dict[str, Any]:
        """The liquidation engine closes the whole position (Bybit ``BustTrade``, Binance ``autoclose-`` order)."""
        return await self._exchange_action("liquidate", api_key, symbol, price, None, position_side)

    async def auto_deleverage(
        self,
        api_key: str,
        symbol: str,
        quantity: Decimal | str | None = None,
        price: Decimal | str | None = None,
        *,
        position_side: str | None = None,
    ) -> dict[str, Any]:
        """Auto-deleveraging closes ``quantity`` (default all) of the position (Bybit ``AdlTrade``, Binance
        ``adl_autoclose`` order)."""
        return await self._exchange_action("adl", api_key, symbol, price, quantity, position_side)

    async def _exchange_action(
        self,
        name: str,
        api_key: str,
        symbol: str,
        price: Decimal | str | None,
        quantity: Decimal | str | None,
        position_side: str | None,
    ) -> dict[str, Any]:
        body = {
            "api_key": api_key,
            "symbol": symbol,
            "price": None if price is None else str(price),
            "quantity": None if quantity is None else str(quantity),
            "position_side": position_side,
        }
        return await self._call("POST", name, {k: v for k, v in body.items() if v is not None})

    # ------------------------------------------------------------------ time travel

    async def age_account(self, api_key: str, seconds: int) -> dict[str, int]:
        """Move the account's orders, trades and positions ``seconds`` into the past (look-up windows and
        horizons then see them as that old); returns how many of each were shifted. Together with the
        ``clock_offset_ms`` setting this is the simulator's time travel."""
        return dict(await self._call("POST", "age", {"api_key": api_key, "seconds": seconds}))

    async def forget_realtime_orders(self, api_key: str | None = None) -> int:
        """Empty Bybit's ``/v5/order/realtime`` cache of closed orders (one account, or all), as a Bybit restart
        does; the orders stay in ``/v5/order/history``. Returns how many accounts were touched."""
        body = {} if api_key is None else {"api_key": api_key}
        return int((await self._call("POST", "forget_realtime", body))["accounts"])

    # ------------------------------------------------------------------ faults

    async def add_fault(
        self,
        route: str,
        kind: str,
        count: int = 1,
        *,
        api_key: str | None = None,
        http_status: int | None = None,
        body: str | None = None,
        code: int | None = None,
        msg: str | None = None,
        seconds: float | None = None,
    ) -> dict[str, Any]:
        """Inject ``kind`` into the next ``count`` requests to ``route`` ("METHOD /path").

        Kinds: ``http`` (raw ``http_status``/``body``), ``error`` (native ``code``/``msg``), ``rate_limit``
        (the venue's rate-limit answer), ``ban`` (Binance: 429 then, for calls within ``seconds``, a 418 IP
        ban; Bybit: HTTP 403 and the IP refused for ``seconds``), ``timeout``, ``accept_then_timeout``."""
        fault = {
            "route": route,
            "kind": kind,
            "count": count,
            "api_key": api_key,
            "http_status": http_status,
            "body": body,
            "code": code,
            "msg": msg,
            "seconds": seconds,
        }
        return await self._call("POST", "fault", {k: v for k, v in fault.items() if v is not None})

    async def bans(self) -> list[dict[str, Any]]:
        """The IPs currently banned or backing off, per venue."""
        return list(await self._call("GET", "bans"))

    async def lift_bans(self) -> int:
        """Forget every rate-limit count, back-off and ban of both venues; returns how many bans were lifted."""
        return int((await self._call("DELETE", "bans"))["lifted"])

    async def faults(self) -> list[dict[str, Any]]:
        """The faults not used up yet."""
        return await self._call("GET", "faults")

    async def clear_faults(self) -> int:
        """Drop every pending fault; returns how many there were."""
        answer = await self._call("DELETE", "faults")
        return int(answer["cleared"])

    # ------------------------------------------------------------------ private streams

    async def streams(self, api_key: str | None = None) -> dict[str, Any]:
        """The private websocket streams (of one API key, or all): ``connections`` (id, venue, api_key,
        listen_key, topics, opened_ms, expired, silent, silent_for, and the counts of events ``sent``,
        ``skipped`` by a skip fault, ``lost`` to silence or an expired key, ``queued``, and ``replies`` to
        Bybit requests), pending counted
        ``faults`` (skip, delay, refuse_auth per venue and key) and Binance ``listen_keys`` (key, expires_ms,
        active, expired, closed)."""
        return dict(await self._call("GET", "streams", params=_key_param(api_key)))

    async def drop_streams(self, venue: str | None = None, api_key: str | None = None, *, mode: str = "abort") -> int:
        """End the open stream connections of ``api_key`` on ``venue`` (None: every key / both venues);
        returns how many. ``mode`` "abort" cuts the TCP connection without a close frame (a network failure),
        "close" sends a websocket close frame (1001 going away) first. Clients must reconnect (and, since the
        venues replay nothing, re-read the account over REST)."""
        body = {"venue": venue, "api_key": api_key, "mode": mode}
        return int((await self._call("POST", "streams/drop", _without_none(body)))["dropped"])

    async def silence_streams(
        self, venue: str | None = None, api_key: str | None = None, seconds: float | None = None
    ) -> int:
        """Make the open stream connections of ``api_key`` on ``venue`` (None: all) go silent: no events (they
        are lost, not held) and no answer to pings (protocol ping frames and Bybit ``ping`` ops), for
        ``seconds`` or until ``clear_stream_faults``; the sockets stay open. Connections opened afterwards
        are not affected. Returns how many connections were silenced."""
        body = {"venue": venue, "api_key": api_key, "seconds": seconds}
        return int((await self._call("POST", "streams/silence", _without_none(body)))["silenced"])

    async def skip_stream_events(self, venue: str, api_key: str, count: int) -> list[dict[str, Any]]:
        """Drop the next ``count`` account events of ``api_key`` on ``venue`` (events that would have reached
        at least one of its connections; see ``egis.simulator.streams``). Returns the pending stream faults
        of the key."""
        body = {"venue": venue, "api_key": api_key, "count": count}
        return list(await self._call("POST", "streams/skip", body))

    async def delay_stream_events(self, venue: str, api_key: str, count: int, seconds: float) -> list[dict[str, Any]]:
        """Hold each of the next ``count`` account events of ``api_key`` on ``venue`` ``seconds`` before sending
        it (the events behind it wait: order is kept). Returns the pending stream faults of the key."""
        body = {"venue": venue, "api_key": api_key, "count": count, "seconds": seconds}
        return list(await self._call("POST", "streams/delay", body))

    async def refuse_stream_auth(self, venue: str, api_key: str, count: int = 1) -> list[dict[str, Any]]:
        """Refuse the next ``count`` stream authentications of ``api_key``: Bybit ``auth`` ops answer
        ``{"success": false, "ret_msg": "Params Error", "op": "auth", ...}``, Binance ``POST
        /fapi/v1/listenKey`` answers -2015 (HTTP 401). Returns the pending stream faults of the key."""
        body = {"venue": venue, "api_key": api_key, "count": count}
        return list(await self._call("POST", "streams/refuse_auth", body))

    async def expire_listen_key(self, api_key: str) -> str | None:
        """Expire the account's active Binance listen key now, as if 60 minutes had passed without a POST or
        PUT: its connections get ``listenKeyExpired`` and no further events (they stay open), PUT answers
        -1125 and the next POST creates a new key. Returns the expired key (None: there was no active key).
        Moving the clock (``settings(clock_offset_ms=...)``) past the key's expiry does the same."""
        return (await self._call("POST", "streams/expire_listen_key", {"api_key": api_key}))["listen_key"]

    async def clear_stream_faults(self, venue: str | None = None, api_key: str | None = None) -> int:
        """Lift silences and drop pending skip/delay/refuse_auth faults (of one venue and/or key); returns how
        many were cleared."""
        body = {"venue": venue, "api_key": api_key}
        return int((await self._call("DELETE", "streams/faults", _without_none(body)))["cleared"])

    # ------------------------------------------------------------------ inspection

    async def orders(self, api_key: str | None = None) -> list[dict[str, Any]]:
        """The order log: every order-create request received over the API, accepted or rejected."""
        return await self._call("GET", "orders", params=_key_param(api_key))

    async def requests(self) -> list[dict[str, Any]]:
        """The request log: every exchange request (method, path, query, body, api_key, fault)."""
        return await self._call("GET", "requests")

    async def positions(self, api_key: str) -> list[dict[str, Any]]:
        """The open positions of an account (signed ``quantity``)."""
        return await self._call("GET", "positions", params=_key_param(api_key))

    async def trades(self, api_key: str) -> list[dict[str, Any]]:
        """Every trade of an account, with its order's ``client_order_id`` and ``source``."""
        return await self._call("GET", "trades", params=_key_param(api_key))

    # ------------------------------------------------------------------ plumbing

    async def _call(
        self, method: str, name: str, body: dict[str, Any] | None = None, params: dict[str, str] | None = None
    ) -> Any:
        if self._session is None:
            raise SimulatorControlError("use SimulatorControl as 'async with SimulatorControl(url) as sim'")
        url = f"{self._base_url}/_sim/{name}"
        async with self._session.request(method, url, json=body, params=params) as response:
            status, text = response.status, await response.text()
        try:
            payload = json.loads(text)
        except ValueError:
            raise SimulatorControlError(f"{method} /_sim/{name}: HTTP {status}: {text[:200]}") from None
        if status != 200:
            error = payload.get("error") if isinstance(payload, dict) else payload
            raise SimulatorControlError(f"{method} /_sim/{name}: HTTP {status}: {error}")
        return _parse_decimals(payload)


def _without_none(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _key_param(api_key: str | None) -> dict[str, str]:
    return {} if api_key is None else {"api_key": api_key}


def _parse_decimals(value: Any) -> Any:
    """Turn the known money/quantity fields back into Decimals, leaving raw request parameters alone."""
    if isinstance(value, list):
        return [_parse_decimals(item) for item in value]
    if not isinstance(value, dict):
        return value
    parsed: dict[str, Any] = {}
    for key, item in value.items():
        if key in DECIMAL_FIELDS and isinstance(item, str):
            parsed[key] = Decimal(item)
        elif key in _RAW_FIELDS:
            parsed[key] = item
        else:
            parsed[key] = _parse_decimals(item)
    return parsed
