"""Runs the exchange simulator: both exchange front ends and the control API on one aiohttp server.

Paths do not collide (Binance ``/fapi/``, Bybit ``/v5/``, control ``/_sim/``), so one port serves a
ccxt ``binanceusdm`` and a ccxt ``bybit`` client at the same time. A middleware logs every exchange
request and applies injected faults before the front end sees the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

from aiohttp import web
from aiohttp.typedefs import Middleware

from egis.simulator.binance import BinanceFrontEnd
from egis.simulator.bybit import BybitFrontEnd
from egis.simulator.control_api import CONTROL_PREFIX, control_routes
from egis.simulator.core import SimulatorCore
from egis.simulator.faults import Fault, FaultBook, FaultKind
from egis.simulator.wire import PARAMS_KEY, FrontEnd, Handler, read_params

EXCHANGES = ("binanceusdm", "bybit")
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


@dataclass
class SimulatorServer:
    """A running simulator; ``core`` and ``faults`` give in-process tests direct access to its state."""

    base_url: str
    core: SimulatorCore
    faults: FaultBook
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


def build_app(core: SimulatorCore, faults: FaultBook, stopping: asyncio.Event) -> web.Application:
    """The aiohttp application serving both exchanges and the control API for one core."""
    front_ends: tuple[FrontEnd, ...] = (BinanceFrontEnd(core), BybitFrontEnd(core))
    app = web.Application(middlewares=[_exchange_middleware(core, faults, front_ends, stopping)])
    for front_end in front_ends:
        app.add_routes(front_end.routes())
    app.add_routes(control_routes(core, faults, front_ends))
    return app


async def start_simulator(host: str = "127.0.0.1", port: int = 0) -> SimulatorServer:
    """Start a fresh simulator on ``host:port`` (``port=0`` picks a free port)."""
    core, faults, stopping = SimulatorCore(), FaultBook(), asyncio.Event()
    runner = web.AppRunner(build_app(core, faults, stopping), access_log=None, shutdown_timeout=5)
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
    return SimulatorServer(f"http://{url_host}:{bound_port}", core, faults, runner, stopping)


def run_standalone(exchange: str, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM, announcing ``simulator <exchange> listening on <url>`` on stdout.

    Both front ends are served whatever ``exchange`` says; it only names what the caller wants to use.
    """
    if exchange not in EXCHANGES:
        raise ValueError(f"exchange must be one of {', '.join(EXCHANGES)}, got {exchange!r}")
    asyncio.run(_serve(exchange, host, port))


async def _serve(exchange: str, host: str, port: int) -> None:
    server = await start_simulator(host, port)
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
    core: SimulatorCore, faults: FaultBook, front_ends: Sequence[FrontEnd], stopping: asyncio.Event
) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(CONTROL_PREFIX):
            return await handler(request)
        query, body = await read_params(request)
        request[PARAMS_KEY] = query | body
        front_end = next((f for f in front_ends if request.path.startswith(f.path_prefix)), None)
        api_key = request.headers.get(front_end.api_key_header) if front_end else None
        fault = faults.take(request.method, request.path, api_key)
        kind = fault.kind.value if fault else None
        core.log_request(request.method, request.path, query=query, body=body, api_key=api_key, fault=kind)
        if fault is None:
            return await handler(request)
        return await _apply_fault(fault, front_end, request, handler, stopping)

    return middleware


async def _apply_fault(
    fault: Fault,
    front_end: FrontEnd | None,
    request: web.Request,
    handler: Handler,
    stopping: asyncio.Event,
) -> web.StreamResponse:
    if fault.kind is FaultKind.HTTP:
        content_type = "text/html" if fault.text.lstrip().startswith("<") else "text/plain"
        return web.Response(status=fault.status, text=fault.text, content_type=content_type)
    if fault.kind is FaultKind.TIMEOUT:
        await _hold(stopping, fault.seconds)
        return web.Response(status=504, text="Gateway Timeout")
    if fault.kind is FaultKind.ACCEPT_THEN_TIMEOUT:
        response = await handler(request)
        await _hold(stopping, fault.seconds)
        return response
    if front_end is None:  # a native error needs an exchange; the control API refuses such faults
        raise web.HTTPNotFound()
    if fault.kind is FaultKind.RATE_LIMIT:
        return front_end.rate_limit_response()
    assert fault.code is not None, "Fault.__post_init__ requires a code for error faults"
    return front_end.error_response(fault.code, fault.msg or "", fault.http_status)


async def _hold(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if the server is stopping."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)
