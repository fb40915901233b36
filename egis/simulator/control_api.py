"""Server side of the simulator's control API (``/_sim/...``): prices, API keys, settings, exchange-side
actions (closes, liquidations, ADL), time travel, faults, bans, logs, private-stream faults and inspection.

JSON in, JSON out; Decimals travel as strings. Invalid input (unknown symbol, missing field, bad value)
is answered with HTTP 400 and ``{"error": "<message>"}``. See ``egis.simulator.control.SimulatorControl``
for the client and what each route does.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import fields, is_dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from aiohttp import web

from egis.simulator.core import (
    SETTING_TYPES,
    Account,
    Fill,
    Position,
    PositionSide,
    SimulatorCore,
    SimulatorError,
)
from egis.simulator.faults import Fault, FaultBook, FaultKind, parse_route
from egis.simulator.streams import STREAM_VENUES, DropMode, StreamHub
from egis.simulator.wire import FrontEnd, fmt

CONTROL_PREFIX = "/_sim/"

_T = TypeVar("_T")
Body = dict[str, Any]
ControlHandler = Callable[[Body, Mapping[str, str]], Any]


class ControlError(Exception):
    """Invalid control request; answered with HTTP 400."""


def control_routes(
    core: SimulatorCore, faults: FaultBook, front_ends: Sequence[FrontEnd], hub: StreamHub
) -> list[web.RouteDef]:
    """The aiohttp routes of the control API of one simulator."""
    return _ControlApi(core, faults, front_ends, hub).routes()


class _ControlApi:
    def __init__(self, core: SimulatorCore, faults: FaultBook, front_ends: Sequence[FrontEnd], hub: StreamHub) -> None:
        self._core = core
        self._faults = faults
        self._hub = hub
        self._prefixes = tuple(front_end.path_prefix for front_end in front_ends)

    def routes(self) -> list[web.RouteDef]:
        handlers: dict[tuple[str, str], ControlHandler] = {
            ("POST", "price"): self._set_price,
            ("POST", "api_keys"): self._add_api_keys,
            ("GET", "api_keys"): lambda _, __: sorted(self._core.api_keys),
            ("DELETE", "api_keys"): self._remove_api_key,
            ("POST", "close_position"): self._close_position,
            ("POST", "reduce_position"): self._reduce_position,
            ("POST", "liquidate"): self._liquidate,
            ("POST", "adl"): self._auto_deleverage,
            ("POST", "age"): self._age,
            ("POST", "forget_realtime"): self._forget_realtime,
            ("POST", "position_mode"): self._position_mode,
            ("GET", "bans"): lambda _, __: self._bans(),
            ("DELETE", "bans"): self._lift_bans,
            ("POST", "fault"): self._add_fault,
            ("GET", "faults"): lambda _, __: [_fault_json(f) for f in self._faults.pending()],
            ("DELETE", "faults"): lambda _, __: {"cleared": self._faults.clear()},
            ("GET", "orders"): self._order_log,
            ("GET", "requests"): lambda _, __: _jsonable(self._core.request_log),
            ("GET", "positions"): self._positions,
            ("GET", "trades"): self._trades,
            ("POST", "balance"): self._set_balance,
            ("POST", "settings"): self._update_settings,
            ("GET", "settings"): lambda _, __: _jsonable(self._core.settings),
            ("POST", "reset"): self._reset,
            ("GET", "streams"): lambda _, query: self._hub.state(query.get("api_key")),
            ("POST", "streams/drop"): self._drop_streams,
            ("POST", "streams/silence"): self._silence_streams,
            ("POST", "streams/skip"): self._skip_events,
            ("POST", "streams/delay"): self._delay_events,
            ("POST", "streams/refuse_auth"): self._refuse_stream_auth,
            ("POST", "streams/expire_listen_key"): self._expire_listen_key,
            ("DELETE", "streams/faults"): self._clear_stream_faults,
        }
        return [web.route(m, CONTROL_PREFIX + name, _handler(h)) for (m, name), h in handlers.items()]

    def _set_price(self, body: Body, _: Mapping[str, str]) -> Any:
        symbol, price = _required(body, "symbol", _as_str), _required(body, "price", _as_decimal)
        self._core.set_price(symbol, price)
        return {"symbol": symbol, "price": fmt(price)}

    def _add_api_keys(self, body: Body, _: Mapping[str, str]) -> Any:
        """``{"api_key": ..., "secret": ...}`` or ``{"keys": {api_key: secret, ...}}``."""
        keys = body.get("keys")
        if keys is None:
            keys = {_required(body, "api_key", _as_str): _required(body, "secret", _as_str)}
        if not isinstance(keys, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in keys.items()):
            raise ControlError("field 'keys' must map API keys to secrets")
        for api_key, secret in keys.items():
            self._core.register_api_key(api_key, secret)
        return {"registered": sorted(keys)}

    def _remove_api_key(self, body: Body, _: Mapping[str, str]) -> Any:
        return {"removed": self._core.unregister_api_key(_required(body, "api_key", _as_str))}

    def _close_position(self, body: Body, _: Mapping[str, str]) -> Any:
        fill = self._core.close_position(
            _required(body, "api_key", _as_str),
            _required(body, "symbol", _as_str),
            _optional(body, "price", _as_decimal),
            _optional(body, "position_side", _as_position_side),
        )
        return _fill_json(fill)

    def _reduce_position(self, body: Body, _: Mapping[str, str]) -> Any:
        fill = self._core.reduce_position(
            _required(body, "api_key", _as_str),
            _required(body, "symbol", _as_str),
            _required(body, "quantity", _as_decimal),
            _optional(body, "price", _as_decimal),
            _optional(body, "position_side", _as_position_side),
        )
        return _fill_json(fill)

    def _liquidate(self, body: Body, _: Mapping[str, str]) -> Any:
        fill = self._core.liquidate(
            _required(body, "api_key", _as_str),
            _required(body, "symbol", _as_str),
            _optional(body, "price", _as_decimal),
            _optional(body, "position_side", _as_position_side),
        )
        return _fill_json(fill)

    def _auto_deleverage(self, body: Body, _: Mapping[str, str]) -> Any:
        fill = self._core.auto_deleverage(
            _required(body, "api_key", _as_str),
            _required(body, "symbol", _as_str),
            _optional(body, "quantity", _as_decimal),
            _optional(body, "price", _as_decimal),
            _optional(body, "position_side", _as_position_side),
        )
        return _fill_json(fill)

    def _age(self, body: Body, _: Mapping[str, str]) -> Any:
        return self._core.age_account(_required(body, "api_key", _as_str), _required(body, "seconds", _as_int))

    def _forget_realtime(self, body: Body, _: Mapping[str, str]) -> Any:
        return {"accounts": self._core.forget_realtime_orders(_optional(body, "api_key", _as_str))}

    def _position_mode(self, body: Body, _: Mapping[str, str]) -> Any:
        api_key = _required(body, "api_key", _as_str)
        switched = self._core.set_position_mode(
            api_key, _required(body, "hedge", _as_bool), _optional(body, "symbol", _as_str)
        )
        return {"api_key": api_key, "switched": switched}

    def _bans(self) -> Any:
        now = self._core.now_ms()
        return self._core.binance_limits.bans(now) + self._core.bybit_limits.bans(now)

    def _lift_bans(self, _: Body, __: Mapping[str, str]) -> Any:
        """Forget every rate-limit count, back-off and ban of both venues."""
        lifted = len(self._bans())
        self._core.binance_limits.reset()
        self._core.bybit_limits.reset()
        return {"lifted": lifted}

    def _add_fault(self, body: Body, _: Mapping[str, str]) -> Any:
        route = _required(body, "route", _as_str)
        kind = _required(body, "kind", FaultKind)
        try:
            method, path = parse_route(route)
            fault = Fault(
                method=method,
                path=path,
                kind=kind,
                remaining=_or_default(_optional(body, "count", _as_int), 1),
                api_key=_optional(body, "api_key", _as_str),
                http_status=_optional(body, "http_status", _as_int),
                body=_optional(body, "body", _as_text),
                code=_optional(body, "code", _as_int),
                msg=_optional(body, "msg", _as_text),
                seconds=_or_default(_optional(body, "seconds", _as_seconds), 30.0),
            )
        except ValueError as exc:
            raise ControlError(str(exc)) from None
        native = kind in (FaultKind.ERROR, FaultKind.RATE_LIMIT, FaultKind.BAN)
        if native and not path.startswith(self._prefixes):
            raise ControlError(f"a {kind.value!r} fault needs an exchange path ({', '.join(self._prefixes)}...)")
        self._faults.add(fault)
        return _fault_json(fault)

    def _order_log(self, _: Body, query: Mapping[str, str]) -> Any:
        api_key = query.get("api_key")
        return _jsonable([e for e in self._core.order_log if api_key in (None, e.api_key)])

    def _positions(self, _: Body, query: Mapping[str, str]) -> Any:
        account = self._existing_account(query)
        if account is None:
            return []
        return [self._position_json(account, p) for p in account.open_positions()]

    def _position_json(self, account: Account, position: Position) -> Any:
        mark = self._core.mark_prices[position.symbol]
        extra = {
            "mark_price": mark,
            "unrealized_pnl": position.unrealized_pnl(mark),
            "leverage": account.leverage_for(position.symbol),
        }
        return _jsonable(position) | _jsonable(extra)

    def _trades(self, _: Body, query: Mapping[str, str]) -> Any:
        account = self._existing_account(query)
        if account is None:
            return []
        return [
            _jsonable(t)
            | {"client_order_id": account.orders[t.order_id].client_order_id}
            | {"source": account.orders[t.order_id].source.value}
            for t in account.trades
        ]

    def _existing_account(self, query: Mapping[str, str]) -> Account | None:
        """The account named by the ``api_key`` query parameter, without creating it."""
        api_key = query.get("api_key")
        if not api_key:
            raise ControlError("query parameter 'api_key' is required")
        return self._core.accounts.get(api_key)

    def _set_balance(self, body: Body, _: Mapping[str, str]) -> Any:
        api_key, balance = _required(body, "api_key", _as_str), _required(body, "balance", _as_decimal)
        self._core.set_balance(api_key, balance)
        return {"api_key": api_key, "balance": fmt(balance)}

    def _update_settings(self, body: Body, _: Mapping[str, str]) -> Any:
        """Any of the ``Settings`` fields; ints, booleans and (as strings or numbers) decimals."""
        parsers: dict[type, Callable[[Any], Any]] = {int: _as_int, bool: _as_bool, Decimal: _as_decimal}
        changes = {}
        for name in body:
            if name not in SETTING_TYPES:
                raise ControlError(f"unknown setting {name!r}")
            changes[name] = _optional(body, name, parsers[SETTING_TYPES[name]])
        settings = self._core.update_settings(**{k: v for k, v in changes.items() if v is not None})
        return _jsonable(settings)

    async def _reset(self, _: Body, __: Mapping[str, str]) -> Any:
        self._core.reset()
        self._faults.clear()
        await self._hub.reset()
        return {"ok": True}

    # ------------------------------------------------------------------ private streams

    async def _drop_streams(self, body: Body, _: Mapping[str, str]) -> Any:
        mode = _or_default(_optional(body, "mode", DropMode), DropMode.ABORT)
        dropped = await self._hub.drop(_optional(body, "venue", _as_venue), _optional(body, "api_key", _as_str), mode)
        return {"dropped": dropped}

    def _silence_streams(self, body: Body, _: Mapping[str, str]) -> Any:
        seconds = _optional(body, "seconds", _as_seconds)
        if seconds is not None and seconds <= 0:
            raise ControlError("field 'seconds' must be positive")
        silenced = self._hub.silence(_optional(body, "venue", _as_venue), _optional(body, "api_key", _as_str), seconds)
        return {"silenced": silenced}

    def _skip_events(self, body: Body, _: Mapping[str, str]) -> Any:
        venue, api_key = _required(body, "venue", _as_venue), _required(body, "api_key", _as_str)
        self._hub.skip(venue, api_key, _required(body, "count", _as_count))
        return self._hub.state(api_key)["faults"]

    def _delay_events(self, body: Body, _: Mapping[str, str]) -> Any:
        venue, api_key = _required(body, "venue", _as_venue), _required(body, "api_key", _as_str)
        seconds = _required(body, "seconds", _as_seconds)
        if seconds < 0:
            raise ControlError("field 'seconds' must not be negative")
        self._hub.delay(venue, api_key, _required(body, "count", _as_count), seconds)
        return self._hub.state(api_key)["faults"]

    def _refuse_stream_auth(self, body: Body, _: Mapping[str, str]) -> Any:
        venue, api_key = _required(body, "venue", _as_venue), _required(body, "api_key", _as_str)
        self._hub.refuse_auth(venue, api_key, _or_default(_optional(body, "count", _as_count), 1))
        return self._hub.state(api_key)["faults"]

    def _expire_listen_key(self, body: Body, _: Mapping[str, str]) -> Any:
        key = self._hub.listen_keys.expire_now(_required(body, "api_key", _as_str))
        return {"listen_key": None if key is None else key.key}

    def _clear_stream_faults(self, body: Body, _: Mapping[str, str]) -> Any:
        cleared = self._hub.clear_faults(_optional(body, "venue", _as_venue), _optional(body, "api_key", _as_str))
        return {"cleared": cleared}


def _handler(handle: ControlHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def route(request: web.Request) -> web.Response:
        try:
            body = await _json_object(request)
            answer = handle(body, request.query)
            if inspect.isawaitable(answer):
                answer = await answer
            return web.json_response(answer)
        except (ControlError, SimulatorError) as exc:
            return web.json_response({"error": str(exc)}, status=400)

    return route


async def _json_object(request: web.Request) -> Body:
    text = await request.text()
    if not text.strip():
        return {}
    try:
        body = json.loads(text)
    except ValueError:
        raise ControlError("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ControlError("request body must be a JSON object")
    return body


def _optional(body: Body, name: str, parse: Callable[[Any], _T]) -> _T | None:
    value = body.get(name)
    if value is None:
        return None
    try:
        return parse(value)
    except (TypeError, ValueError, InvalidOperation) as exc:
        raise ControlError(f"field {name!r}: {exc or 'invalid value'} (got {value!r})") from None


def _required(body: Body, name: str, parse: Callable[[Any], _T]) -> _T:
    value = _optional(body, name, parse)
    if value is None:
        raise ControlError(f"field {name!r} is required")
    return value


def _or_default(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def _as_str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError("expected a non-empty string")
    return value


def _as_text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected an integer")
    return value


def _as_position_side(value: Any) -> PositionSide:
    if not isinstance(value, str):
        raise TypeError("expected BOTH, LONG or SHORT")
    return PositionSide(value.upper())


def _as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("expected true or false")
    return value


def _as_count(value: Any) -> int:
    count = _as_int(value)
    if count < 1:
        raise ValueError("expected a count of at least 1")
    return count


def _as_venue(value: Any) -> str:
    if value not in STREAM_VENUES:
        raise ValueError(f"expected one of {', '.join(STREAM_VENUES)}")
    return str(value)


def _as_seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("expected a number of seconds")
    return float(value)


def _as_decimal(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError("expected a number or a numeric string")
    number = Decimal(str(value))
    if not number.is_finite():
        raise ValueError("expected a finite number")
    return number


def _fill_json(fill: Fill) -> Any:
    return _jsonable(fill)


def _fault_json(fault: Fault) -> Any:
    return _jsonable(fault) | {"route": fault.route}


def _jsonable(value: Any) -> Any:
    """Dataclasses, lists and dicts as JSON-ready values, Decimals as plain strings."""
    if isinstance(value, Decimal):
        return fmt(value)
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    return value
