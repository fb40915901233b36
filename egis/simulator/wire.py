"""HTTP plumbing shared by the simulator's exchange front ends: the FrontEnd base, parameters, errors."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

from aiohttp import web

from egis.simulator.core import Account, SimulatorCore, UnknownSymbol

Params = dict[str, Any]
Payload = dict[str, Any] | list[Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PublicHandler = Callable[[Params], Payload]
PrivateHandler = Callable[[Params, Account], Payload]

PARAMS_KEY = web.RequestKey("params", dict[str, Any])


class ApiError(Exception):
    """An exchange-native error answer: ``code``/``msg`` with ``http_status`` (front-end default if None)."""

    def __init__(self, code: int, msg: str, http_status: int | None = None) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg
        self.http_status = http_status


class BadParameter(Exception):
    """A request parameter is missing or malformed; each front end answers its native params error."""


class FrontEnd(ABC):
    """An exchange protocol served by the simulator under one path prefix.

    Subclasses list their endpoints as synchronous handlers of the parsed request parameters (plus, for
    private endpoints, the caller's account, found by the API key header) that return a JSON payload or
    raise ApiError, BadParameter or UnknownSymbol; they render answers and errors the native way.
    """

    path_prefix: ClassVar[str]
    api_key_header: ClassVar[str]

    def __init__(self, core: SimulatorCore) -> None:
        self._core = core

    def routes(self) -> list[web.RouteDef]:
        """The aiohttp routes of every endpoint served."""
        public = [web.route(m, path, self._public(h)) for (m, path), h in self._public_endpoints().items()]
        private = [web.route(m, path, self._private(h)) for (m, path), h in self._private_endpoints().items()]
        return public + private

    @abstractmethod
    def error_response(self, code: int, msg: str, http_status: int | None = None) -> web.Response:
        """An exchange-native error answer (``http_status`` None: the exchange's usual status)."""

    @abstractmethod
    def rate_limit_response(self) -> web.Response:
        """The exchange's answer to a client over its rate limit."""

    @abstractmethod
    def _public_endpoints(self) -> dict[tuple[str, str], PublicHandler]:
        """Handlers of the unauthenticated endpoints, by (HTTP method, path)."""

    @abstractmethod
    def _private_endpoints(self) -> dict[tuple[str, str], PrivateHandler]:
        """Handlers of the endpoints that need an API key, by (HTTP method, path)."""

    @abstractmethod
    def _success_response(self, payload: Payload) -> web.Response:
        """A successful answer carrying ``payload``."""

    @abstractmethod
    def _missing_key_error(self) -> ApiError:
        """The error answering a private request without an API key."""

    @abstractmethod
    def _invalid_request_error(self, exc: BadParameter | UnknownSymbol) -> ApiError:
        """The native error for a malformed parameter or an unknown symbol."""

    def _public(self, handler: PublicHandler) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            return self._respond(lambda: handler(params_of(request)))

        return handle

    def _private(self, handler: PrivateHandler) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            api_key = request.headers.get(self.api_key_header)
            if not api_key:
                return self._error(self._missing_key_error())
            account = self._core.account(api_key)
            return self._respond(lambda: handler(params_of(request), account))

        return handle

    def _respond(self, produce: Callable[[], Payload]) -> web.Response:
        try:
            return self._success_response(produce())
        except ApiError as exc:
            return self._error(exc)
        except (BadParameter, UnknownSymbol) as exc:
            return self._error(self._invalid_request_error(exc))

    def _error(self, error: ApiError) -> web.Response:
        return self.error_response(error.code, error.msg, error.http_status)


async def read_params(request: web.Request) -> tuple[dict[str, str], Params]:
    """Query-string and body parameters (form or JSON object; anything else counts as no body)."""
    query = dict(request.query)
    if not request.can_read_body:
        return query, {}
    if request.content_type == "application/x-www-form-urlencoded":
        return query, {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    try:
        body = json.loads(await request.text())
    except ValueError:
        return query, {}
    return query, body if isinstance(body, dict) else {}


def params_of(request: web.Request) -> Params:
    """The parameters the simulator middleware parsed for this request (body values win)."""
    return request[PARAMS_KEY]


def fmt(value: Decimal) -> str:
    """A Decimal as the exchanges write numbers in JSON: a plain string, never exponent notation."""
    return format(value, "f")


def parse_bool(value: object) -> bool:
    """``true`` in any of the forms clients send (JSON true, "true", "True")."""
    return value is True or (isinstance(value, str) and value.lower() == "true")


def required(params: Params, name: str) -> str:
    """A mandatory, non-empty parameter as a string."""
    value = params.get(name)
    if value is None or value == "":
        raise BadParameter(f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
    return str(value)


def optional(params: Params, name: str) -> str | None:
    """An optional parameter as a string; an empty value counts as absent."""
    value = params.get(name)
    return None if value is None or value == "" else str(value)


def optional_int(params: Params, name: str) -> int | None:
    """An optional integer parameter."""
    value = optional(params, name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise BadParameter(f"Parameter '{name}' must be an integer, got {value!r}.") from None


def limit_param(params: Params, default: int, maximum: int) -> int:
    """The ``limit`` parameter, defaulted and clamped like the exchanges do."""
    limit = optional_int(params, "limit")
    return default if limit is None or limit <= 0 else min(limit, maximum)


def decimal_param(params: Params, name: str) -> Decimal:
    """A mandatory decimal parameter."""
    value = required(params, name)
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise BadParameter(f"Parameter '{name}' must be a number, got {value!r}.") from None
    if not number.is_finite():
        raise BadParameter(f"Parameter '{name}' must be a finite number, got {value!r}.")
    return number


def in_window(time_ms: int, start_ms: int | None, end_ms: int | None) -> bool:
    """Whether a timestamp lies in the optional inclusive window [start_ms, end_ms]."""
    return (start_ms is None or time_ms >= start_ms) and (end_ms is None or time_ms <= end_ms)
