"""Async client of the simulator's control API (``/_sim/...``), for tests, demos and benchmarks.

Usage::

    async with SimulatorControl(server.base_url) as sim:
        await sim.set_price("BTCUSDT", Decimal("61000"))
        await sim.add_fault("POST /fapi/v1/order", "accept_then_timeout", seconds=2)

Answers are plain dicts and lists; money and quantity fields are parsed back into Decimals.
"""

from __future__ import annotations

import json
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

    async def settings(
        self,
        *,
        bybit_reduce_only_code: int | None = None,
        fee_rate: Decimal | str | None = None,
        starting_balance: Decimal | str | None = None,
    ) -> dict[str, Any]:
        """Change the given settings and return them all (no argument: just read them)."""
        body = {
            "bybit_reduce_only_code": bybit_reduce_only_code,
            "fee_rate": None if fee_rate is None else str(fee_rate),
            "starting_balance": None if starting_balance is None else str(starting_balance),
        }
        return await self._call("POST", "settings", {k: v for k, v in body.items() if v is not None})

    async def reset(self) -> None:
        """Back to a fresh simulator: default prices and settings, no accounts, logs or faults."""
        await self._call("POST", "reset", {})

    # ------------------------------------------------------------------ exchange-side actions

    async def close_position(self, api_key: str, symbol: str, price: Decimal | str | None = None) -> dict[str, Any]:
        """Close the whole position on the exchange side; returns ``{"order": ..., "trade": ...}``."""
        body = {"api_key": api_key, "symbol": symbol}
        if price is not None:
            body["price"] = str(price)
        return await self._call("POST", "close_position", body)

    async def reduce_position(
        self, api_key: str, symbol: str, quantity: Decimal | str, price: Decimal | str | None = None
    ) -> dict[str, Any]:
        """Reduce the position by ``quantity`` on the exchange side; returns ``{"order", "trade"}``."""
        body = {"api_key": api_key, "symbol": symbol, "quantity": str(quantity)}
        if price is not None:
            body["price"] = str(price)
        return await self._call("POST", "reduce_position", body)

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
        """Inject ``kind`` into the next ``count`` requests to ``route`` ("METHOD /path")."""
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

    async def faults(self) -> list[dict[str, Any]]:
        """The faults not used up yet."""
        return await self._call("GET", "faults")

    async def clear_faults(self) -> int:
        """Drop every pending fault; returns how many there were."""
        answer = await self._call("DELETE", "faults")
        return int(answer["cleared"])

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
