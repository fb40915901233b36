"""Runs the exchange simulator: both exchange front ends and the control API on one aiohttp server.

Paths do not collide (Binance ``/fapi/``, Bybit ``/v5/``, control ``/_sim/``), so one port serves a
ccxt ``binanceusdm`` and a ccxt ``bybit`` client at the same time. A middleware logs every exchange
request, applies injected faults and the venue's rate limits before the front end sees the request, and
adds the venue's rate-limit headers to the answer.

The private websocket streams (Binance ``/private/ws?listenKey=`` and ``/ws/<listenKey>``, Bybit
``/v5/private``; see ``binance_stream`` and ``bybit_stream``) are served on the same port, which is what
ccxt.pro reaches once ``point_to_local`` has rewritten its URLs. Their upgrade requests are logged and
take ``http`` and ``timeout`` faults (a refused or hanging handshake); rate limits do not apply to them.
Stream faults (drops, silence, skipped or delayed events, refused auth) are the control API's
``/_sim/streams/...`` routes.

Private endpoints accept only registered API keys (``start_simulator(api_keys=...)``, the control API's
``POST /_sim/api_keys``, or for the standalone process ``--api-key KEY:SECRET`` / the environment variable
``EGIS_SIMULATOR_API_KEYS="key1:secret1,key2:secret2"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from aiohttp import web
from aiohttp.typedefs import Middleware

from egis.simulator.binance import BinanceFrontEnd
from egis.simulator.binance_stream import BinanceStream
from egis.simulator.bybit import BybitFrontEnd
from egis.simulator.bybit_stream import BybitStream
from egis.simulator.control_api import CONTROL_PREFIX, control_routes
from egis.simulator.core import SimulatorCore
from egis.simulator.faults import Fault, FaultBook, FaultKind
from egis.simulator.markets import DEFAULT_MARKETS, MarketSpec, with_synthetic_markets
from egis.simulator.streams import StreamHub
from egis.simulator.wire import PARAMS_KEY, RAW_KEY, FrontEnd, Handler, read_params

EXCHANGES = ("binanceusdm", "bybit")
API_KEYS_ENV = "EGIS_SIMULATOR_API_KEYS"
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


@dataclass
class SimulatorServer:
    """A running simulator; ``core``, ``faults`` and ``streams`` give in-process tests direct access to its state."""

    base_url: str
    core: SimulatorCore
    faults: FaultBook
    streams: StreamHub
    _runner: web.AppRunner = field(repr=False)
    _stopping: asyncio.Event = field(repr=False)

    async def stop(self) -> None:
        """Stop serving; requests held by timeout faults are released at once."""
        self._stopping.set()
        await self._runner.cleanup()

    async def __aenter__(self) -> SimulatorServer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


def build_app(core: SimulatorCore, faults: FaultBook, stopping: asyncio.Event, hub: StreamHub) -> web.Application:
    """The aiohttp application serving both exchanges (REST and private streams) and the control API for one
    core."""
    bybit = BybitFrontEnd(core)
    front_ends: tuple[FrontEnd, ...] = (BinanceFrontEnd(core, hub), bybit)
    streams = (BinanceStream(core, hub), BybitStream(core, hub, bybit))

    def stream_path(path: str) -> bool:
        return any(stream.owns(path) for stream in streams)

    app = web.Application(middlewares=[_exchange_middleware(core, faults, front_ends, stream_path, stopping)])
    for front_end in front_ends:
        app.add_routes(front_end.routes())
    for stream in streams:
        app.add_routes(stream.routes())
    app.add_routes(control_routes(core, faults, front_ends, hub))
    app.on_startup.append(hub.start)
    app.on_shutdown.append(hub.stop)
    return app


async def start_simulator(
    host: str = "127.0.0.1",
    port: int = 0,
    api_keys: Mapping[str, str] | None = None,
    markets: Iterable[MarketSpec] = DEFAULT_MARKETS,
) -> SimulatorServer:
    """Start a fresh simulator on ``host:port`` (``port=0`` picks a free port), accepting ``api_keys``
    (API key -> secret; more can be registered later through the control API) and listing ``markets``
    (e.g. ``markets.with_synthetic_markets(2000)`` for an account holding hundreds of positions)."""
    core, faults, stopping = SimulatorCore(markets), FaultBook(), asyncio.Event()
    hub = StreamHub(core)
    for api_key, secret in (api_keys or {}).items():
        core.register_api_key(api_key, secret)
    runner = web.AppRunner(build_app(core, faults, stopping, hub), access_log=None, shutdown_timeout=5)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    url_host = "127.0.0.1" if host in _WILDCARD_HOSTS else host
    if ":" in url_host:
        url_host = f"[{url_host}]"
    return SimulatorServer(f"http://{url_host}:{bound_port}", core, faults, hub, runner, stopping)


def run_standalone(
    exchange: str,
    host: str,
    port: int,
    api_keys: Mapping[str, str] | None = None,
    synthetic_markets: int = 0,
) -> None:
    """Serve until SIGINT/SIGTERM, announcing ``simulator <exchange> listening on <url>`` on stdout.

    Both front ends are served whatever ``exchange`` says; it only names what the caller wants to use.
    The accepted API keys are ``api_keys`` plus those of the ``EGIS_SIMULATOR_API_KEYS`` environment
    variable (``key1:secret1,key2:secret2``). ``synthetic_markets`` made-up USDT perpetuals
    (``S0001USDT``...) are listed after the default markets.
    """
    if exchange not in EXCHANGES:
        raise ValueError(f"exchange must be one of {', '.join(EXCHANGES)}, got {exchange!r}")
    keys = parse_api_keys(os.environ.get(API_KEYS_ENV, "")) | dict(api_keys or {})
    asyncio.run(_serve(exchange, host, port, keys, with_synthetic_markets(synthetic_markets)))


def parse_api_keys(text: str) -> dict[str, str]:
    """``"key1:secret1,key2:secret2"`` as a mapping; raises ValueError on an entry without both parts."""
    keys = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        api_key, _, secret = entry.partition(":")
        if not api_key or not secret:
            raise ValueError(f"API keys must look like KEY:SECRET, got {entry!r}")
        keys[api_key] = secret
    return keys


async def _serve(
    exchange: str, host: str, port: int, api_keys: Mapping[str, str], markets: Sequence[MarketSpec]
) -> None:
    server = await start_simulator(host, port, api_keys, markets)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    sys.stdout.write(f"simulator {exchange} listening on {server.base_url}\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await server.stop()


def _exchange_middleware(
    core: SimulatorCore,
    faults: FaultBook,
    front_ends: Sequence[FrontEnd],
    stream_path: Callable[[str], bool],
    stopping: asyncio.Event,
) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(CONTROL_PREFIX):
            return await handler(request)
        if stream_path(request.path):
            fault = faults.take(request.method, request.path, None)
            kind = fault.kind.value if fault else None
            core.log_request(request.method, request.path, query=dict(request.query), body={}, api_key=None, fault=kind)
            if fault is not None and fault.kind in (FaultKind.HTTP, FaultKind.TIMEOUT):
                return await _infrastructure_fault(fault, stopping)
            return await handler(request)
        query, body, raw_query, raw_body = await read_params(request)
        # "If a parameter sent in both the query string and request body, the query string parameter will be
        # used" (Binance USD-M General Info); Bybit never sends both.
        request[PARAMS_KEY] = body | query
        request[RAW_KEY] = (raw_query, raw_body)
        front_end = next((f for f in front_ends if request.path.startswith(f.path_prefix)), None)
        api_key = request.headers.get(front_end.api_key_header) if front_end else None
        fault = faults.take(request.method, request.path, api_key)
        kind = fault.kind.value if fault else None
        core.log_request(request.method, request.path, query=query, body=body, api_key=api_key, fault=kind)
        if fault is not None and fault.kind in (FaultKind.HTTP, FaultKind.TIMEOUT):
            return await _infrastructure_fault(fault, stopping)  # never reached the venue: no limits, no headers
        if front_end is None:
            if fault is not None and fault.kind is not FaultKind.ACCEPT_THEN_TIMEOUT:
                raise web.HTTPNotFound()  # a native answer needs an exchange; the control API refuses such faults
            response = await handler(request)
        else:
            refusal = front_end.admit(request, api_key)
            response = await _answer(fault, front_end, refusal, request, handler)
            if core.settings.rate_limit_headers:
                front_end.decorate(request, response, api_key)
        if fault is not None and fault.kind is FaultKind.ACCEPT_THEN_TIMEOUT:
            await _hold(stopping, fault.seconds)
        return response

    return middleware


async def _infrastructure_fault(fault: Fault, stopping: asyncio.Event) -> web.StreamResponse:
    if fault.kind is FaultKind.HTTP:
        content_type = "text/html" if fault.text.lstrip().startswith("<") else "text/plain"
        return web.Response(status=fault.status, text=fault.text, content_type=content_type)
    await _hold(stopping, fault.seconds)
    return web.Response(status=504, text="Gateway Timeout")


async def _answer(
    fault: Fault | None,
    front_end: FrontEnd,
    refusal: web.Response | None,
    request: web.Request,
    handler: Handler,
) -> web.StreamResponse:
    """A native fault's answer, else the rate-limit refusal, else the endpoint's answer."""
    if fault is not None and fault.kind is FaultKind.RATE_LIMIT:
        return front_end.rate_limit_response(request)
    if fault is not None and fault.kind is FaultKind.BAN:
        return front_end.ban_response(request, fault.seconds)
    if fault is not None and fault.kind is FaultKind.ERROR:
        assert fault.code is not None, "Fault.__post_init__ requires a code for error faults"
        return front_end.error_response(fault.code, fault.msg or "", fault.http_status)
    if refusal is not None:
        return refusal
    return await handler(request)


async def _hold(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if the server is stopping."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)
