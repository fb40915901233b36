"""Accounts with many positions, markets by the thousand: paging like the real venues, read to the end by Egis.

Bybit answers its position list and its instrument list in pages (``limit`` with a default and a maximum,
``cursor`` / ``nextPageCursor``; docs/v5/position/position.mdx, docs/v5/market/instrument.mdx); Binance's
positionRisk and exchangeInfo answer everything at once. The simulator lists made-up markets
(``markets.synthetic_markets``) so an account can hold hundreds of positions, and the tests drive it with the
real ccxt clients, then read it with Egis's own gateway: every open position, or a typed error, never a part.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from decimal import Decimal
from typing import Any

import ccxt.async_support as ccxt
import pytest
from ccxt.async_support.base.exchange import Exchange as CcxtExchange
from temporalio.exceptions import ApplicationError

import egis.exchanges.ccxt_gateway as ccxt_gateway
import egis.simulator.bybit as sim_bybit
from activities.common import read_failure
from egis.exchanges.accounts import AccountConfig
from egis.exchanges.base import ExchangeCallError, IncompleteRead
from egis.exchanges.ccxt_gateway import CcxtGateway
from egis.exchanges.local import point_to_local
from egis.models import ErrorClass, Exchange, Side
from egis.simulator import SimulatorServer, start_simulator
from egis.simulator.core import OrderRequest, PositionSide, VenueRules
from egis.simulator.markets import DEFAULT_MARKETS, synthetic_markets, with_synthetic_markets

SYNTHETIC = 1200  # more than one page of Bybit instruments even at limit 1000
BY_KEY, BN_KEY = ("paging-by-key", "paging-by-secret"), ("paging-bn-key", "paging-bn-secret")
VENUE_OF = {BY_KEY[0]: "bybit", BN_KEY[0]: "binanceusdm"}
# Bybit's own rules for an order (egis/simulator/bybit.py _create_order); the minimums are met anyway.
RULES = VenueRules(
    min_notional=lambda market: market.bybit_min_notional,
    closing_exempt_from_min_qty=False,
    closing_exempt_from_min_notional=True,
    client_id_unique_forever=True,
)
PARAMS_ERROR = re.compile(r'"retCode": ?10001')


def symbols(first: int, last: int) -> list[str]:
    """``S0001USDT``-style symbols first..last (inclusive)."""
    return [f"S{n:04d}USDT" for n in range(first, last + 1)]


def hold(
    sim: SimulatorServer,
    api_key: str,
    names: Iterable[str],
    side: str = "BUY",
    position_side: PositionSide | None = None,
) -> None:
    """Open a 10-unit position in each symbol, as filled API orders of the account (through the core: hundreds
    of orders without hundreds of requests)."""
    for symbol in names:
        request = OrderRequest(api_key, VENUE_OF[api_key], symbol, side, "MARKET", "10", False, None, position_side)
        sim.core.place_order(request, lambda _: 0, RULES)


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    markets = with_synthetic_markets(SYNTHETIC)
    async with await start_simulator(api_keys=dict([BY_KEY, BN_KEY]), markets=markets) as server:
        server.core.set_balance(BY_KEY[0], Decimal(1_000_000))
        server.core.set_balance(BN_KEY[0], Decimal(1_000_000))
        yield server


@pytest.fixture
async def make_client(sim: SimulatorServer) -> AsyncIterator[Callable[[str], CcxtExchange]]:
    made: list[CcxtExchange] = []

    def make(exchange_id: str) -> CcxtExchange:
        api_key, secret = BY_KEY if exchange_id == "bybit" else BN_KEY
        cls = ccxt.bybit if exchange_id == "bybit" else ccxt.binanceusdm
        config = {"apiKey": api_key, "secret": secret, "enableRateLimit": False, "timeout_on_exit": 0}
        client = point_to_local(cls(config), sim.base_url)
        made.append(client)
        return client

    yield make
    await asyncio.gather(*(client.close() for client in made))


@pytest.fixture
def bybit(make_client: Callable[[str], CcxtExchange]) -> CcxtExchange:
    return make_client("bybit")


@pytest.fixture
async def make_gateway(sim: SimulatorServer) -> AsyncIterator[Callable[[Exchange], CcxtGateway]]:
    made: list[CcxtGateway] = []

    def make(exchange: Exchange) -> CcxtGateway:
        api_key, secret = BY_KEY if exchange is Exchange.BYBIT else BN_KEY
        config = AccountConfig(exchange=exchange, api_key=api_key, secret=secret, base_url=sim.base_url)
        gateway = CcxtGateway(exchange, f"paging-{exchange.value}", config)
        gateway.ccxt.timeout_on_exit = 0
        made.append(gateway)
        return gateway

    yield make
    await asyncio.gather(*(gateway.close() for gateway in made))


async def pages(endpoint: Callable[[dict[str, Any]], Awaitable[Any]], query: dict[str, Any]) -> list[dict[str, Any]]:
    """Every page's ``result``, following ``nextPageCursor`` until it is empty."""
    results: list[dict[str, Any]] = []
    while len(results) < 20:
        result = (await endpoint(dict(query)))["result"]
        results.append(result)
        if not result["nextPageCursor"]:
            return results
        query = {**query, "cursor": result["nextPageCursor"]}
    raise AssertionError("the cursor never ran out")


def listed(results: list[dict[str, Any]]) -> list[str]:
    return [row["symbol"] for result in results for row in result["list"]]


def requests_to(sim: SimulatorServer, path: str, start: int = 0) -> list[dict[str, str]]:
    return [r.query for r in sim.core.request_log[start:] if r.path == path]


# ------------------------------------------------------------------------------------------ synthetic markets


def test_synthetic_markets_are_plausible_unique_and_pure() -> None:
    made = synthetic_markets(3)
    assert [m.symbol for m in made] == ["S0001USDT", "S0002USDT", "S0003USDT"] and made == synthetic_markets(3)
    assert all(
        1 <= m.initial_price < 2 and m.qty_step == m.min_qty == 1 and m.tick_size == Decimal("0.0001") for m in made
    )
    assert all(m.bybit_min_notional == m.binance_min_notional == 5 for m in made)
    many = with_synthetic_markets(12_000)
    assert many[: len(DEFAULT_MARKETS)] == DEFAULT_MARKETS and many[-1].symbol == "S12000USDT"
    assert len({m.symbol for m in many}) == len(many)
    assert synthetic_markets(0) == ()
    with pytest.raises(ValueError):
        synthetic_markets(-1)


async def test_standalone_simulator_lists_synthetic_markets() -> None:
    command = [sys.executable, "-m", "egis.simulator", "--exchange", "bybit", "--synthetic-markets", "30"]
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    assert process.stdout is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 15)).decode().strip()
        client = point_to_local(ccxt.bybit({"enableRateLimit": False, "timeout_on_exit": 0}), line.rsplit(" ", 1)[1])
        try:
            assert (await client.fetch_ticker("S0030/USDT:USDT"))["info"]["markPrice"] == "1.3"
        finally:
            await client.close()
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0


# ------------------------------------------------------------------------------------------ Bybit position list


async def test_bybit_position_list_pages_20_rows_by_default(sim: SimulatorServer, bybit: CcxtExchange) -> None:
    hold(sim, BY_KEY[0], symbols(1, 45))
    results = await pages(bybit.privateGetV5PositionList, {"category": "linear", "settleCoin": "USDT"})
    assert [len(r["list"]) for r in results] == [20, 20, 5]
    assert [bool(r["nextPageCursor"]) for r in results] == [True, True, False]
    assert listed(results) == symbols(1, 45)  # every position once, by symbol


async def test_bybit_position_list_pages_up_to_200_rows(sim: SimulatorServer, bybit: CcxtExchange) -> None:
    hold(sim, BY_KEY[0], symbols(1, 450))
    query = {"category": "linear", "settleCoin": "USDT", "limit": 200}
    results = await pages(bybit.privateGetV5PositionList, query)
    assert [len(r["list"]) for r in results] == [200, 200, 50]
    assert listed(results) == symbols(1, 450)
    # a last page that is exactly full still ends the list
    exact = await pages(bybit.privateGetV5PositionList, {**query, "limit": 150})
    assert [len(r["list"]) for r in exact] == [150, 150, 150] and exact[-1]["nextPageCursor"] == ""


@pytest.mark.parametrize("limit", [0, 201, -5, "many"])
async def test_bybit_position_list_refuses_a_limit_outside_1_to_200(bybit: CcxtExchange, limit: object) -> None:
    with pytest.raises(ccxt.BadRequest, match=PARAMS_ERROR):
        await bybit.privateGetV5PositionList({"category": "linear", "settleCoin": "USDT", "limit": limit})


async def test_bybit_position_list_refuses_a_cursor_it_never_gave(bybit: CcxtExchange) -> None:
    with pytest.raises(ccxt.BadRequest, match=PARAMS_ERROR):
        await bybit.privateGetV5PositionList({"category": "linear", "settleCoin": "USDT", "cursor": "nonsense"})


async def test_bybit_cursor_continues_after_positions_change_between_pages(
    sim: SimulatorServer, bybit: CcxtExchange
) -> None:
    """The cursor names where the last page ended: a position closed or opened meanwhile neither repeats a
    row nor pushes one off the list."""
    hold(sim, BY_KEY[0], symbols(1, 30))
    query = {"category": "linear", "settleCoin": "USDT", "limit": 10}
    first = (await bybit.privateGetV5PositionList(query))["result"]
    sim.core.close_position(BY_KEY[0], "S0005USDT")  # on the page already read
    sim.core.close_position(BY_KEY[0], "S0015USDT")  # on the next one
    hold(sim, BY_KEY[0], ["S0031USDT"])
    rest = await pages(bybit.privateGetV5PositionList, {**query, "cursor": first["nextPageCursor"]})
    assert listed([first]) == symbols(1, 10)
    assert listed(rest) == [s for s in symbols(11, 31) if s != "S0015USDT"]


async def test_bybit_hedge_mode_rows_page_by_symbol_then_position_idx(
    sim: SimulatorServer, bybit: CcxtExchange
) -> None:
    sim.core.set_position_mode(BY_KEY[0], True, "S0002USDT")
    hold(sim, BY_KEY[0], ["S0003USDT", "S0001USDT"])
    hold(sim, BY_KEY[0], ["S0002USDT"], "SELL", PositionSide.SHORT)
    hold(sim, BY_KEY[0], ["S0002USDT"], "BUY", PositionSide.LONG)
    results = await pages(bybit.privateGetV5PositionList, {"category": "linear", "settleCoin": "USDT", "limit": 1})
    rows = [(row["symbol"], row["positionIdx"], row["side"]) for r in results for row in r["list"]]
    assert rows == [("S0001USDT", 0, "Buy"), ("S0002USDT", 1, "Buy"), ("S0002USDT", 2, "Sell"), ("S0003USDT", 0, "Buy")]
    assert [bool(r["nextPageCursor"]) for r in results] == [True, True, True, False]


# ------------------------------------------------------------------------------------------ Bybit instruments


async def test_bybit_instruments_info_pages_500_by_default_and_up_to_1000(bybit: CcxtExchange) -> None:
    everything = sorted(m.symbol for m in with_synthetic_markets(SYNTHETIC))
    default = await pages(bybit.publicGetV5MarketInstrumentsInfo, {"category": "linear"})
    assert [len(r["list"]) for r in default] == [500, 500, 205] and default[-1]["nextPageCursor"] == ""
    largest = await pages(bybit.publicGetV5MarketInstrumentsInfo, {"category": "linear", "limit": 1000})
    assert [len(r["list"]) for r in largest] == [1000, 205]
    assert listed(default) == listed(largest) == everything
    prelaunch = await bybit.publicGetV5MarketInstrumentsInfo({"category": "linear", "status": "PreLaunch"})
    assert prelaunch["result"]["list"] == [] and prelaunch["result"]["nextPageCursor"] == ""


@pytest.mark.parametrize("limit", [0, 1001])
async def test_bybit_instruments_info_refuses_a_limit_outside_1_to_1000(bybit: CcxtExchange, limit: int) -> None:
    with pytest.raises(ccxt.BadRequest, match=PARAMS_ERROR):
        await bybit.publicGetV5MarketInstrumentsInfo({"category": "linear", "limit": limit})


async def test_ccxt_bybit_loads_every_instrument_page(sim: SimulatorServer, bybit: CcxtExchange) -> None:
    bybit.options["fetchMarkets"] = {**bybit.options.get("fetchMarkets", {}), "types": ["linear"]}
    markets = await bybit.load_markets()
    assert len(markets) == len(DEFAULT_MARKETS) + SYNTHETIC and "S1200/USDT:USDT" in markets
    asked = requests_to(sim, "/v5/market/instruments-info")
    assert [(q.get("limit"), q.get("status"), bool(q.get("cursor"))) for q in asked] == [
        ("1000", None, False),
        ("1000", "PreLaunch", False),
        ("1000", None, True),
    ]


# ------------------------------------------------------------------------------------------ Binance: no paging


async def test_binance_lists_every_market_and_every_position_at_once(
    sim: SimulatorServer, make_client: Callable[[str], CcxtExchange]
) -> None:
    binance = make_client("binanceusdm")
    markets = await binance.load_markets()
    assert len(markets) == len(DEFAULT_MARKETS) + SYNTHETIC and "S1200/USDT:USDT" in markets
    hold(sim, BN_KEY[0], symbols(1, 250))
    start = len(sim.core.request_log)
    held = [p for p in await binance.fetch_positions() if p["contracts"]]
    assert sorted(p["info"]["symbol"] for p in held) == symbols(1, 250)
    assert [r.path for r in sim.core.request_log[start:]] == ["/fapi/v3/positionRisk"]


# ------------------------------------------------------------------------------------------ Egis's gateway


async def test_gateway_reads_every_bybit_position_page(
    sim: SimulatorServer, make_gateway: Callable[[Exchange], CcxtGateway]
) -> None:
    """More than 200 open positions: ccxt's fetch_positions would stop at the first 200, and the exchange
    sync would take the others for closed (ghosts)."""
    hold(sim, BY_KEY[0], symbols(1, 250))
    sim.core.set_position_mode(BY_KEY[0], True, "S0300USDT")
    hold(sim, BY_KEY[0], ["S0300USDT"], "BUY", PositionSide.LONG)
    hold(sim, BY_KEY[0], ["S0300USDT"], "SELL", PositionSide.SHORT)
    gateway = make_gateway(Exchange.BYBIT)
    await gateway.load_markets()
    start = len(sim.core.request_log)
    held = await gateway.fetch_positions()
    expected = {(s, Side.LONG) for s in symbols(1, 250)} | {("S0300USDT", Side.LONG), ("S0300USDT", Side.SHORT)}
    assert len(held) == 252 and {(p.symbol, p.side) for p in held} == expected
    assert all(p.quantity == 10 for p in held)
    asked = requests_to(sim, "/v5/position/list", start)
    assert [(q["settleCoin"], q["limit"], "cursor" in q) for q in asked] == [
        ("USDT", "200", False),
        ("USDT", "200", True),
    ]


async def test_gateway_reads_a_small_bybit_account_in_one_request(
    sim: SimulatorServer, make_gateway: Callable[[Exchange], CcxtGateway]
) -> None:
    hold(sim, BY_KEY[0], ["BTCUSDT", "S0007USDT"])
    gateway = make_gateway(Exchange.BYBIT)
    await gateway.load_markets()
    start = len(sim.core.request_log)
    assert sorted(p.symbol for p in await gateway.fetch_positions()) == ["BTCUSDT", "S0007USDT"]
    assert len(requests_to(sim, "/v5/position/list", start)) == 1


async def test_gateway_reads_every_binance_position(
    sim: SimulatorServer, make_gateway: Callable[[Exchange], CcxtGateway]
) -> None:
    hold(sim, BN_KEY[0], symbols(1, 250))
    gateway = make_gateway(Exchange.BINANCEUSDM)
    held = await gateway.fetch_positions()
    assert sorted(p.symbol for p in held) == symbols(1, 250)


async def test_gateway_refuses_more_pages_than_its_bound(
    sim: SimulatorServer, make_gateway: Callable[[Exchange], CcxtGateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ccxt_gateway, "MAX_POSITION_PAGES", 2)
    hold(sim, BY_KEY[0], symbols(1, 401))  # three pages of 200
    gateway = make_gateway(Exchange.BYBIT)
    await gateway.load_markets()
    start = len(sim.core.request_log)
    with pytest.raises(IncompleteRead, match="more than 2 pages") as info:
        await gateway.fetch_positions()
    assert len(requests_to(sim, "/v5/position/list", start)) == 2
    assert_refused_read(info.value)


async def test_gateway_refuses_a_cursor_that_comes_back(
    sim: SimulatorServer, make_gateway: Callable[[Exchange], CcxtGateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A venue that ignores the cursor answers the first page again, forever."""
    hold(sim, BY_KEY[0], symbols(1, 201))
    gateway = make_gateway(Exchange.BYBIT)
    await gateway.load_markets()  # before the venue goes wrong: ccxt's market loader would follow it forever
    monkeypatch.setattr(sim_bybit, "_cursor_key", lambda token: None)
    start = len(sim.core.request_log)
    with pytest.raises(IncompleteRead, match="again after 200 positions") as info:
        await gateway.fetch_positions()
    assert len(requests_to(sim, "/v5/position/list", start)) == 2
    assert_refused_read(info.value)


def assert_refused_read(error: IncompleteRead) -> None:
    """What the callers of fetch_positions (exchange sync, phantom evidence, stream gap-fill, selftest) make
    of it: an ExchangeCallError like any failed read, PERMANENT, a non-retryable activity failure."""
    assert isinstance(error, ExchangeCallError) and error.operation == "read"
    assert error.classify().outcome is ErrorClass.PERMANENT
    failure = read_failure(error)
    assert isinstance(failure, ApplicationError) and failure.non_retryable and "IncompleteRead" in str(failure)
