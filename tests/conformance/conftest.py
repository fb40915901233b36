"""Conformance fixtures: Egis's real `CcxtGateway` (real ccxt client) pointed at a server that replays REAL
recorded exchange answers (`server.FixtureServer`), and the same gateway pointed at the project's simulator for
parity checks. Every fixture file names where its answer was recorded (`_source`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from egis.exchanges.accounts import AccountConfig
from egis.exchanges.base import ExchangeCallError
from egis.exchanges.ccxt_gateway import CcxtGateway
from egis.models import Exchange
from egis.simulator.control import SimulatorControl
from egis.simulator.server import SimulatorServer, start_simulator
from tests.conformance.server import FixtureServer

BN, BY = Exchange.BINANCEUSDM, Exchange.BYBIT
VENUES = [BN, BY]
KEYS = {BN: ("conformance-bn-key", "conformance-bn-secret"), BY: ("conformance-by-key", "conformance-by-secret")}

MakeGateway = Callable[..., CcxtGateway]


def serve_markets(server: FixtureServer, exchange: Exchange) -> None:
    """The venue's clock (read when a gateway starts) and the recorded market lists ccxt's load_markets asks
    for (one request on Binance, two on Bybit)."""
    if exchange is BN:
        server.answer("GET", "/fapi/v1/time", "binanceusdm/server_time")
        server.answer("GET", "/fapi/v1/exchangeInfo", "binanceusdm/exchange_info")
    else:
        server.answer("GET", "/v5/market/time", "bybit/server_time")
        server.answer("GET", "/v5/market/instruments-info", "bybit/instruments_linear")
        server.answer("GET", "/v5/market/instruments-info", "bybit/instruments_prelaunch", when={"status": "PreLaunch"})


def build_gateway(exchange: Exchange, base_url: str, *, keys: tuple[str, str] | None = None) -> CcxtGateway:
    api_key, secret = keys or KEYS[exchange]
    config = AccountConfig(exchange=exchange, api_key=api_key, secret=secret, base_url=base_url, timeout_ms=3000)
    gateway = CcxtGateway(exchange, f"conformance-{exchange.value}", config)
    gateway._ex.timeout_on_exit = 0  # ccxt otherwise sleeps 250 ms on close (for TLS shutdown; moot on local http)
    return gateway


@pytest_asyncio.fixture
async def recorded() -> AsyncIterator[FixtureServer]:
    """A fresh recorded-answer server; the test queues the answers it wants. A request no recorded answer
    covered fails the test at teardown (Egis asked the venue something the test did not expect)."""
    async with FixtureServer() as server:
        yield server
    unexpected = [f"{r.method} {r.path}" for r in server.unanswered()]
    assert not unexpected, f"requests without a recorded answer: {unexpected}"


@pytest_asyncio.fixture
async def make_gateway() -> AsyncIterator[MakeGateway]:
    """Builds `CcxtGateway`s (closed at the end of the test)."""
    made: list[CcxtGateway] = []

    def make(exchange: Exchange, base_url: str, **kwargs: Any) -> CcxtGateway:
        gateway = build_gateway(exchange, base_url, **kwargs)
        made.append(gateway)
        return gateway

    yield make
    await asyncio.gather(*(g.close() for g in made))


@pytest_asyncio.fixture
async def simulator() -> AsyncIterator[SimulatorServer]:
    """A fresh project simulator (both venues on one port) that accepts this suite's API keys."""
    keys = {api_key: secret for api_key, secret in KEYS.values()}
    try:
        server = await start_simulator(api_keys=keys)
    except TypeError:  # a simulator that checks no keys
        server = await start_simulator()
    yield server
    await server.stop()


@pytest_asyncio.fixture
async def simulator_control(simulator: SimulatorServer) -> AsyncIterator[SimulatorControl]:
    async with SimulatorControl(simulator.base_url) as control:
        yield control


@pytest.fixture
def venue_gateway(recorded: FixtureServer, make_gateway: MakeGateway) -> Callable[[Exchange], CcxtGateway]:
    """A gateway for `exchange` on the recorded-answer server, its market list already queued."""

    def make(exchange: Exchange) -> CcxtGateway:
        serve_markets(recorded, exchange)
        return make_gateway(exchange, recorded.base_url)

    return make


async def call_error(awaitable: Awaitable[Any]) -> ExchangeCallError:
    """The ExchangeCallError an Egis gateway call raises (fails the test if it returns)."""
    with pytest.raises(ExchangeCallError) as info:
        await awaitable
    return info.value
