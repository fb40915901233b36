"""HTTP plumbing shared by the simulator's exchange front ends: the FrontEnd base, parameters, errors.

A request to an exchange path goes through the server middleware (request log, injected faults, then
``FrontEnd.admit``: the venue's rate limits), then the endpoint handler (private endpoints first
authenticate: registered API key, timestamp within the receive window, signature), and every answer
gets the venue's rate-limit headers from ``FrontEnd.decorate``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from aiohttp import web

from egis.simulator.core import Account, SimulatorCore, UnknownSymbol

Params = dict[str, Any]
Payload = dict[str, Any] | list[Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PublicHandler = Callable[[Params], Payload]
PrivateHandler = Callable[[Params, Account], Payload]

PARAMS_KEY = web.RequestKey("params", dict[str, Any])
RAW_KEY = web.RequestKey("raw", tuple[str, str])  # the raw query string and body, as sent (signatures)


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
    raise ApiError, BadParameter or UnknownSymbol; they render answers and errors the native way, check
    credentials, and apply and report the venue's rate limits.
    """

    path_prefix: ClassVar[str]
    api_key_header: ClassVar[str]

    def __init__(self, core: SimulatorCore) -> None:
        self._core = core

    def routes(self) -> list[web.RouteDef]:
        """The aiohttp routes of every endpoint served."""
        key_only = self._key_only_endpoints()
        public = [web.route(m, path, self._public(h)) for (m, path), h in self._public_endpoints().items()]
        private = [
            web.route(m, path, self._private(h, signed=(m, path) not in key_only))
            for (m, path), h in self._private_endpoints().items()
        ]
        return public + private

    @abstractmethod
    def error_response(self, code: int, msg: str, http_status: int | None = None) -> web.Response:
        """An exchange-native error answer (``http_status`` None: the exchange's usual status)."""

    @abstractmethod
    def rate_limit_response(self, request: web.Request) -> web.Response:
        """The exchange's answer to a client over its rate limit (no state change: the ``rate_limit`` fault)."""

    @abstractmethod
    def ban_response(self, request: web.Request, seconds: float) -> web.Response:
        """Put the caller's IP in the venue's penalty box for ``seconds`` and answer so (the ``ban`` fault)."""

    @abstractmethod
    def admit(self, request: web.Request, api_key: str | None) -> web.Response | None:
        """Count the request against the venue's rate limits; the refusal to answer, if it is over one."""

    @abstractmethod
    def decorate(self, request: web.Request, response: web.StreamResponse, api_key: str | None) -> None:
        """Add the venue's rate-limit headers to an answer."""

    @abstractmethod
    def _public_endpoints(self) -> dict[tuple[str, str], PublicHandler]:
        """Handlers of the unauthenticated endpoints, by (HTTP method, path)."""

    @abstractmethod
    def _private_endpoints(self) -> dict[tuple[str, str], PrivateHandler]:
        """Handlers of the endpoints that need an API key, by (HTTP method, path)."""

    def _key_only_endpoints(self) -> frozenset[tuple[str, str]]:
        """Private endpoints that need the API key but no signature (Binance USER_STREAM)."""
        return frozenset()

    @abstractmethod
    def _success_response(self, payload: Payload) -> web.Response:
        """A successful answer carrying ``payload``."""

    @abstractmethod
    def _authenticate(self, request: web.Request, api_key: str | None, *, signed: bool) -> Account:
        """The account of a private request whose key, timestamp and signature are valid; raises ApiError."""

    @abstractmethod
    def _invalid_request_error(self, exc: BadParameter | UnknownSymbol) -> ApiError:
        """The native error for a malformed parameter or an unknown symbol."""

    def _public(self, handler: PublicHandler) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            return self._respond(lambda: handler(params_of(request)))

        return handle

    def _private(self, handler: PrivateHandler, *, signed: bool) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            try:
                account = self._authenticate(request, request.headers.get(self.api_key_header), signed=signed)
            except ApiError as exc:
                return self._error(exc)
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

    def _secret(self, api_key: str | None) -> str | None:
        """The secret registered for ``api_key`` (None: unknown key)."""
        return self._core.api_keys.get(api_key) if api_key else None


def client_ip(request: web.Request) -> str:
    """The caller's IP address (rate limits and bans are per IP)."""
    return request.remote or "unknown"


def raw_of(request: web.Request) -> tuple[str, str]:
    """The raw query string and body of a request, exactly as sent (what signatures are computed over)."""
    return request[RAW_KEY]


def hmac_sha256_hex(secret: str, payload: str) -> str:
    """Lower-case hex HMAC-SHA256, the signature both venues use for HMAC API keys."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


async def read_params(request: web.Request) -> tuple[dict[str, str], Params, str, str]:
    """Query-string and body parameters (form or JSON object; anything else counts as no body), and the
    raw query string and body text as sent."""
    query = dict(request.query)
    raw_query = request.raw_path.partition("?")[2]
    if not request.can_read_body:
        return query, {}, raw_query, ""
    raw_body = (await request.read()).decode(errors="replace")
    if request.content_type == "application/x-www-form-urlencoded":
        return query, dict(parse_qsl(raw_body, keep_blank_values=True)), raw_query, raw_body
    try:
        body = json.loads(raw_body)
    except ValueError:
        return query, {}, raw_query, raw_body
    return query, body if isinstance(body, dict) else {}, raw_query, raw_body


def params_of(request: web.Request) -> Params:
    """The parameters the simulator middleware parsed for this request (query-string values win)."""
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


def page_limit(params: Params, default: int, maximum: int) -> int:
    """A ``limit`` documented as "[1, ``maximum``]. Default: ``default``": absent (or empty) gives the default;
    anything else must be an integer within the bounds (BadParameter: the venue's params error)."""
    limit = optional_int(params, "limit")
    if limit is None:
        return default
    if not 1 <= limit <= maximum:
        raise BadParameter(f"limit must be in [1, {maximum}], got {limit}")
    return limit


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


def header_int(request: web.Request, name: str) -> int | None:
    """An integer request header (None if absent or not an integer)."""
    try:
        return int(request.headers[name])
    except (KeyError, ValueError):
        return None


def in_window(time_ms: int, start_ms: int | None, end_ms: int | None) -> bool:
    """Whether a timestamp lies in the optional inclusive window [start_ms, end_ms]."""
    return (start_ms is None or time_ms >= start_ms) and (end_ms is None or time_ms <= end_ms)


WEEK_MS = 7 * 86_400_000


class WindowError(Exception):
    """A look-up time window the venue refuses: ``kind`` "too_wide" or "inverted"."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def lookup_window(start_ms: int | None, end_ms: int | None, now_ms: int, span_ms: int = WEEK_MS) -> tuple[int, int]:
    """The time window a venue searches for a history query limited to ``span_ms`` (7 days by default).

    Neither bound: the last ``span_ms``; only the start: [start, start + span]; only the end:
    [end - span, end]; both: as given, refused (WindowError) when wider than ``span_ms`` or inverted.
    This is the documented rule of Bybit's /v5/execution/list (bybit-exchange/docs
    docs/v5/order/execution.mdx, ``startTime``) and the observed one of Binance's /fapi/v1/userTrades
    (see binance.py).
    """
    if start_ms is None and end_ms is None:
        return now_ms - span_ms, now_ms
    if end_ms is None:
        assert start_ms is not None
        return start_ms, start_ms + span_ms
    if start_ms is None:
        return end_ms - span_ms, end_ms
    if start_ms > end_ms:
        raise WindowError("inverted")
    if end_ms - start_ms > span_ms:
        raise WindowError("too_wide")
    return start_ms, end_ms
