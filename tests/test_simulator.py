"""Tests of the local exchange simulator, driven through the real ccxt clients (binanceusdm and bybit).

Every test starts a fresh simulator on a free port and talks to it with unmodified ccxt classes whose
URLs were rewritten by ``point_to_local``.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import ccxt.async_support as ccxt
import pytest
from ccxt.async_support.base.exchange import Exchange

from egis.exchanges.local import point_to_local
from egis.simulator import SimulatorControl, SimulatorControlError, SimulatorServer, start_simulator

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
EXCHANGES = ["binanceusdm", "bybit"]
CLASSES: dict[str, type[Exchange]] = {"binanceusdm": ccxt.binanceusdm, "bybit": ccxt.bybit}

# Routes ccxt uses, per exchange (measured with ccxt 4.5.90).
ROUTES = {
    "binanceusdm": {
        "tickers": "GET /fapi/v1/ticker/24hr",
        "balance": "GET /fapi/v3/account",
        "positions": "GET /fapi/v3/positionRisk",
        "create": "POST /fapi/v1/order",
        "lookup": "GET /fapi/v1/order",
    },
    "bybit": {
        "tickers": "GET /v5/market/tickers",
        "balance": "GET /v5/account/wallet-balance",
        "positions": "GET /v5/position/list",
        "create": "POST /v5/order/create",
        "lookup": "GET /v5/order/realtime",
    },
}

MakeExchange = Callable[..., Exchange]


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    async with await start_simulator() as server:
        yield server


@pytest.fixture
async def control(sim: SimulatorServer) -> AsyncIterator[SimulatorControl]:
    async with SimulatorControl(sim.base_url) as client:
        yield client


@pytest.fixture
async def make_exchange(sim: SimulatorServer) -> AsyncIterator[MakeExchange]:
    created: list[Exchange] = []

    def make(exchange_id: str, api_key: str = "k1", **config: Any) -> Exchange:
        # timeout_on_exit: ccxt's close() otherwise sleeps 250 ms (for TLS shutdown, moot on local http)
        config = {
            "apiKey": api_key,
            "secret": f"{api_key}-secret",
            "enableRateLimit": False,
            "timeout_on_exit": 0,
            **config,
        }
        sim.core.register_api_key(config["apiKey"], config["secret"])
        exchange = point_to_local(CLASSES[exchange_id](config), sim.base_url)
        created.append(exchange)
        return exchange

    yield make
    await asyncio.gather(*(exchange.close() for exchange in created))


@pytest.fixture(params=EXCHANGES)
async def ex(request: pytest.FixtureRequest, make_exchange: MakeExchange) -> Exchange:
    exchange = make_exchange(request.param)
    await exchange.load_markets()
    return exchange


def routes_since(sim: SimulatorServer, start: int) -> list[str]:
    return [f"{r.method} {r.path}" for r in sim.core.request_log[start:]]


def route(ex: Exchange, name: str) -> str:
    return ROUTES[ex.id][name]


async def market_order(
    ex: Exchange, side: str, amount: float, client_id: str, symbol: str = BTC, **params: Any
) -> dict[str, Any]:
    return await ex.create_order(symbol, "market", side, amount, None, {"clientOrderId": client_id, **params})


async def find_by_client_id(ex: Exchange, client_id: str, symbol: str = BTC) -> dict[str, Any]:
    if ex.id == "bybit":
        return await ex.fetch_order("", symbol, {"orderLinkId": client_id, "acknowledged": True})
    return await ex.fetch_order(None, symbol, {"origClientOrderId": client_id})


async def open_positions(ex: Exchange, symbol: str = BTC) -> list[dict[str, Any]]:
    """Positions with contracts (ccxt's bybit keeps the flat row Bybit returns for a named symbol)."""
    return [p for p in await ex.fetch_positions([symbol]) if p["contracts"]]


# ---------------------------------------------------------------------------------------- market data


async def test_load_markets_parses_precision_and_limits(ex: Exchange, sim: SimulatorServer) -> None:
    btc, doge = ex.market(BTC), ex.market("DOGE/USDT:USDT")
    assert set(ex.symbols) >= {BTC, ETH, "SOL/USDT:USDT", "DOGE/USDT:USDT", "CLOUD/USDT:USDT"}
    assert btc["swap"] and btc["linear"] and btc["settle"] == "USDT" and btc["active"]
    assert btc["precision"]["amount"] == 0.001 and btc["precision"]["price"] == 0.1
    # real minimum order values: Binance BTCUSDT 100 USDT, Bybit 5 USDT
    assert (
        btc["limits"]["amount"]["min"] == 0.001
        and btc["limits"]["cost"]["min"] == {"binanceusdm": 100, "bybit": 5}[ex.id]
    )
    assert doge["precision"]["amount"] == 1 and doge["precision"]["price"] == 0.00001
    expected = {
        "binanceusdm": ["GET /fapi/v1/exchangeInfo"],
        "bybit": ["GET /v5/market/instruments-info", "GET /v5/market/instruments-info"],
    }
    assert routes_since(sim, 0) == expected[ex.id]  # no implicit currency, time or account calls


@pytest.mark.parametrize("symbols", [[BTC, ETH], None])
async def test_fetch_tickers_is_one_request(
    ex: Exchange, sim: SimulatorServer, control: SimulatorControl, symbols: list[str] | None
) -> None:
    await control.set_price("ETHUSDT", "3100.5")
    start = len(sim.core.request_log)
    tickers = await ex.fetch_tickers(symbols)
    assert routes_since(sim, start) == [route(ex, "tickers")]
    assert tickers[BTC]["last"] == 60000 and tickers[ETH]["last"] == 3100.5
    assert len(tickers) == (2 if symbols else 5)


async def test_fetch_balance_follows_control_balance(ex: Exchange, control: SimulatorControl) -> None:
    assert (await ex.fetch_balance())["USDT"]["total"] == 10000
    await control.set_balance("k1", "2500.5")
    balance = (await ex.fetch_balance())["USDT"]
    assert balance["total"] == 2500.5 and balance["free"] == 2500.5


# ---------------------------------------------------------------------------------------- orders


async def test_open_long_then_reduce_only_close(ex: Exchange, sim: SimulatorServer, control: SimulatorControl) -> None:
    await market_order(ex, "buy", 0.01, "open-1")
    [position] = await open_positions(ex)
    assert position["side"] == "long" and position["contracts"] == 0.01 and position["entryPrice"] == 60000
    assert (await ex.fetch_balance())["USDT"]["used"] == 600

    await control.set_price("BTCUSDT", "61000")
    await market_order(ex, "sell", 0.02, "close-1", reduceOnly=True)  # capped to the position size

    assert await open_positions(ex) == []
    assert (await ex.fetch_balance())["USDT"]["total"] == 10010
    closing = await find_by_client_id(ex, "close-1")
    assert closing["filled"] == 0.01 and closing["average"] == 61000 and closing["reduceOnly"]
    log = await control.orders("k1")
    assert [(e["client_order_id"], e["outcome"], e["quantity"]) for e in log] == [
        ("open-1", "accepted", Decimal("0.01")),
        ("close-1", "accepted", Decimal("0.02")),
    ]
    assert all(e["venue"] == ex.id for e in log)


async def test_order_lookup_by_client_id(ex: Exchange, sim: SimulatorServer) -> None:
    created = await market_order(ex, "buy", 0.01, "cid-42")
    start = len(sim.core.request_log)
    order = await find_by_client_id(ex, "cid-42")
    assert routes_since(sim, start) == [route(ex, "lookup")]
    assert order["id"] == created["id"] and order["clientOrderId"] == "cid-42"
    assert order["status"] == "closed" and order["filled"] == 0.01 and order["average"] == 60000
    assert order["side"] == "buy" and order["type"] == "market"


async def test_unknown_order_is_order_not_found(ex: Exchange) -> None:
    with pytest.raises(ccxt.OrderNotFound):
        await find_by_client_id(ex, "never-sent")
    created = await market_order(ex, "buy", 0.01, "filled-already")
    with pytest.raises(ccxt.OrderNotFound):  # market orders are filled at once: nothing to cancel
        await ex.cancel_order(created["id"], BTC)


async def test_bybit_order_link_id_is_unique_forever(make_exchange: MakeExchange, control: SimulatorControl) -> None:
    ex = make_exchange("bybit")
    await market_order(ex, "buy", 0.01, "dup-1")
    with pytest.raises(ccxt.InvalidOrder, match="110072"):
        await market_order(ex, "buy", 0.01, "dup-1")
    log = await control.orders("k1")
    assert [(e["outcome"], e["error_code"]) for e in log] == [("accepted", None), ("rejected", 110072)]
    assert [p["quantity"] for p in await control.positions("k1")] == [Decimal("0.01")]


async def test_binance_client_id_is_unique_among_open_orders_only(
    make_exchange: MakeExchange, control: SimulatorControl
) -> None:
    """newClientOrderId is "A unique id among open orders": a market order is filled at once, so its id can
    be reused and the reuse is a NEW order (two accepted entries in the order log, twice the position)."""
    ex = make_exchange("binanceusdm")
    first = await market_order(ex, "buy", 0.01, "dup-1")
    second = await market_order(ex, "buy", 0.01, "dup-1")
    assert first["id"] != second["id"] and first["clientOrderId"] == second["clientOrderId"] == "dup-1"
    log = await control.orders("k1")
    assert [(e["client_order_id"], e["outcome"]) for e in log] == [("dup-1", "accepted"), ("dup-1", "accepted")]
    assert [p["quantity"] for p in await control.positions("k1")] == [Decimal("0.02")]
    assert (await find_by_client_id(ex, "dup-1"))["id"] == second["id"]  # the most recent of the two

    await control.settings(binance_reject_reused_client_id=True)  # the old, kinder behaviour
    with pytest.raises(ccxt.InvalidOrder, match="-4116"):
        await market_order(ex, "buy", 0.01, "dup-1")
    assert (await control.orders("k1"))[-1]["error_code"] == -4116


async def test_reduce_only_without_position_is_rejected(ex: Exchange, control: SimulatorControl) -> None:
    message = {"binanceusdm": "ReduceOnly Order is rejected", "bybit": "current position is zero"}[ex.id]
    with pytest.raises(ccxt.InvalidOrder, match=message):
        await market_order(ex, "sell", 0.01, "ro-1", reduceOnly=True)
    [entry] = await control.orders("k1")
    assert entry["outcome"] == "rejected" and entry["reduce_only"] is True
    assert entry["error_code"] == {"binanceusdm": -2022, "bybit": 110017}[ex.id]
    assert entry["reason"] == "reduce_only_rejected"


async def test_bybit_reduce_only_code_setting(make_exchange: MakeExchange, control: SimulatorControl) -> None:
    ex = make_exchange("bybit")
    await control.settings(bybit_reduce_only_code=170131)  # what seed 003's bot saw; listed under Spot only
    with pytest.raises(ccxt.InsufficientFunds, match="170131"):
        await market_order(ex, "sell", 0.01, "ro-2", reduceOnly=True)
    assert (await control.orders("k1"))[-1]["error_code"] == 170131


async def test_reduce_only_on_the_position_side_is_rejected(ex: Exchange) -> None:
    await market_order(ex, "buy", 0.01, "long-1")
    with pytest.raises((ccxt.InvalidOrder, ccxt.InsufficientFunds)):
        await market_order(ex, "buy", 0.01, "long-2", reduceOnly=True)
    [position] = await open_positions(ex)
    assert position["contracts"] == 0.01


async def test_plain_order_can_flip_the_position(ex: Exchange, control: SimulatorControl) -> None:
    await market_order(ex, "buy", 0.01, "flip-1")
    await control.set_price("BTCUSDT", "59000")
    await market_order(ex, "sell", 0.03, "flip-2")
    [position] = await open_positions(ex)
    assert position["side"] == "short" and position["contracts"] == 0.02 and position["entryPrice"] == 59000
    assert (await control.positions("k1"))[0]["quantity"] == Decimal("-0.02")


async def test_insufficient_margin_depends_on_leverage(ex: Exchange, control: SimulatorControl) -> None:
    with pytest.raises(ccxt.InsufficientFunds):
        await market_order(ex, "buy", 1, "big-1")  # 60000 USDT of exposure at leverage 1
    await ex.set_leverage(10, BTC)
    await market_order(ex, "buy", 1, "big-2")
    assert [e["error_code"] for e in await control.orders("k1")] == [
        {"binanceusdm": -2019, "bybit": 110007}[ex.id],
        None,
    ]


async def test_quantity_validation_uses_native_codes(ex: Exchange, control: SimulatorControl) -> None:
    # Unified create_order rounds amounts to the step, so send the raw request through ccxt's implicit API.
    with pytest.raises(ccxt.BadRequest):
        if ex.id == "bybit":
            await ex.privatePostV5OrderCreate(
                {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "0.0105"}
            )
        else:
            await ex.fapiPrivatePostOrder({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.0105"})
    [entry] = await control.orders("k1")
    assert entry["error_code"] == {"binanceusdm": -1111, "bybit": 10001}[ex.id]
    assert entry["quantity"] == Decimal("0.0105") and entry["reason"] == "qty_precision"


async def test_fee_rate_is_charged(ex: Exchange, control: SimulatorControl) -> None:
    settings = await control.settings(fee_rate="0.0005")
    assert settings["fee_rate"] == Decimal("0.0005") and settings["bybit_reduce_only_code"] == 110017
    await market_order(ex, "buy", 0.01, "fee-1")
    assert (await ex.fetch_balance())["USDT"]["total"] == pytest.approx(9999.7)
    [trade] = await ex.fetch_my_trades(BTC)
    assert trade["fee"]["cost"] == pytest.approx(0.3)


# ---------------------------------------------------------------------------------------- exchange side


async def test_exchange_side_close_shows_in_my_trades(ex: Exchange, control: SimulatorControl) -> None:
    await market_order(ex, "buy", 0.01, "sl-open")
    fill = await control.close_position("k1", "BTCUSDT", price="59000")
    assert fill["order"]["source"] == "exchange" and fill["order"]["client_order_id"] is None
    assert fill["trade"]["realized_pnl"] == Decimal("-10")

    assert await open_positions(ex) == []
    trades = await ex.fetch_my_trades(BTC)
    closing = trades[-1]
    assert closing["side"] == "sell" and closing["amount"] == 0.01 and closing["price"] == 59000
    if ex.id == "binanceusdm":
        assert Decimal(closing["info"]["realizedPnl"]) == Decimal("-10")
    else:
        assert closing["info"]["createType"] == "CreateByClosing"
    assert (await ex.fetch_balance())["USDT"]["total"] == 9990
    assert [e["client_order_id"] for e in await control.orders("k1")] == ["sl-open"]  # not an API order
    assert [t["source"] for t in await control.trades("k1")] == ["api", "exchange"]


async def test_exchange_side_partial_reduce(ex: Exchange, control: SimulatorControl) -> None:
    await market_order(ex, "sell", 0.03, "short-1")
    await control.reduce_position("k1", "BTCUSDT", "0.01")
    [position] = await open_positions(ex)
    assert position["side"] == "short" and position["contracts"] == 0.02
    with pytest.raises(SimulatorControlError, match="quantity"):
        await control.reduce_position("k1", "BTCUSDT", "0.5")


# ---------------------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (500, "Internal Server Error", ccxt.ExchangeNotAvailable),
        (502, "<html><body><h1>502 Bad Gateway</h1></body></html>", ccxt.ExchangeNotAvailable),
        (503, "Service Unavailable.", ccxt.ExchangeNotAvailable),
        (504, "Gateway Timeout", ccxt.RequestTimeout),
    ],
)
async def test_http_fault(
    ex: Exchange,
    sim: SimulatorServer,
    control: SimulatorControl,
    status: int,
    body: str,
    expected: type[Exception],
) -> None:
    await control.add_fault(route(ex, "tickers"), "http", http_status=status, body=body)
    with pytest.raises(expected):
        await ex.fetch_tickers()
    assert len(await ex.fetch_tickers()) == 5  # the fault was used up
    assert [r.fault for r in sim.core.request_log[-2:]] == ["http", None]


async def test_error_fault_is_native_and_not_processed(ex: Exchange, control: SimulatorControl) -> None:
    code, msg = {"binanceusdm": (-2019, "Margin is insufficient."), "bybit": (110007, "ab not enough")}[ex.id]
    await control.add_fault(route(ex, "create"), "error", code=code, msg=msg)
    with pytest.raises(ccxt.InsufficientFunds):
        await market_order(ex, "buy", 0.01, "err-1")
    assert await control.orders("k1") == []
    assert await control.positions("k1") == []


async def test_rate_limit_fault(ex: Exchange, control: SimulatorControl) -> None:
    await control.add_fault(route(ex, "balance"), "rate_limit")
    expected = ccxt.DDoSProtection if ex.id == "binanceusdm" else ccxt.RateLimitExceeded
    with pytest.raises(expected):
        await ex.fetch_balance()


async def test_timeout_fault(ex: Exchange, control: SimulatorControl) -> None:
    ex.timeout = 500  # ms
    await control.add_fault(route(ex, "balance"), "timeout", seconds=5)
    started = time.monotonic()
    with pytest.raises(ccxt.RequestTimeout):
        await ex.fetch_balance()
    assert time.monotonic() - started < 2
    assert (await ex.fetch_balance())["USDT"]["total"] == 10000


async def test_accept_then_timeout_leaves_the_order_in_place(ex: Exchange, control: SimulatorControl) -> None:
    ex.timeout = 500  # ms
    await control.add_fault(route(ex, "create"), "accept_then_timeout", seconds=3)
    with pytest.raises(ccxt.RequestTimeout):
        await market_order(ex, "buy", 0.01, "att-1")
    order = await find_by_client_id(ex, "att-1")
    assert order["status"] == "closed" and order["filled"] == 0.01
    assert [(e["client_order_id"], e["outcome"]) for e in await control.orders("k1")] == [("att-1", "accepted")]
    if ex.id == "bybit":
        with pytest.raises(ccxt.InvalidOrder):  # orderLinkId is unique forever: the retry is refused
            await market_order(ex, "buy", 0.01, "att-1")
        [position] = await open_positions(ex)
        assert position["contracts"] == 0.01
    else:  # the id is unique among OPEN orders only: a blind retry is a second order
        await market_order(ex, "buy", 0.01, "att-1")
        [position] = await open_positions(ex)
        assert position["contracts"] == 0.02


async def test_fault_count_order_and_api_key_filter(make_exchange: MakeExchange, control: SimulatorControl) -> None:
    k1, k2 = make_exchange("bybit", "k1"), make_exchange("bybit", "k2")
    for ex in (k1, k2):
        await ex.load_markets()
    await control.add_fault("GET /v5/position/list", "http", 2, api_key="k1", http_status=500)
    await control.add_fault("GET /v5/position/list", "rate_limit", api_key="k1")
    assert [(f["kind"], f["remaining"]) for f in await control.faults()] == [("http", 2), ("rate_limit", 1)]

    assert await k2.fetch_positions([BTC])  # another key is not affected
    for _ in range(2):
        with pytest.raises(ccxt.ExchangeNotAvailable):
            await k1.fetch_positions([BTC])
    with pytest.raises(ccxt.RateLimitExceeded):
        await k1.fetch_positions([BTC])
    assert await k1.fetch_positions([BTC])
    assert await control.faults() == []

    await control.add_fault("GET /v5/position/list", "http", 5)
    assert await control.clear_faults() == 1
    assert await k1.fetch_positions([BTC])


# ---------------------------------------------------------------------------------------- logs and control


async def test_request_log_records_every_exchange_request(ex: Exchange, control: SimulatorControl) -> None:
    await control.reset()
    await ex.fetch_positions([BTC])
    await market_order(ex, "buy", 0.01, "log-1")
    requests = await control.requests()
    assert [f"{r['method']} {r['path']}" for r in requests] == [route(ex, "positions"), route(ex, "create")]
    assert all(r["api_key"] == "k1" and r["fault"] is None for r in requests)
    params = requests[1]["body"]
    if ex.id == "bybit":
        assert params["orderLinkId"] == "log-1" and params["qty"] == "0.01"
        assert requests[0]["query"]["symbol"] == "BTCUSDT"
    else:
        assert params["newClientOrderId"] == "log-1" and params["quantity"] == "0.01"
        assert "symbol" not in requests[0]["query"]  # ccxt filters positions client-side


async def test_bybit_position_list_flat_row_and_settle_coin(make_exchange: MakeExchange, sim: SimulatorServer) -> None:
    ex = make_exchange("bybit")
    [flat] = await ex.fetch_positions([BTC])
    assert flat["contracts"] == 0 and flat["side"] is None
    assert await ex.fetch_positions() == []
    await market_order(ex, "sell", 0.01, "s-1")
    start = len(sim.core.request_log)
    [short] = await ex.fetch_positions()
    assert short["side"] == "short" and short["symbol"] == BTC
    assert [r.query.get("settleCoin") for r in sim.core.request_log[start:]] == ["USDT"]


async def test_control_api_validates_input(ex: Exchange, control: SimulatorControl) -> None:
    await control.set_price("BTCUSDT", Decimal("62000.5"))
    assert (await ex.fetch_ticker(BTC))["last"] == 62000.5
    bad_calls = [
        (control.set_price("NOPEUSDT", "1"), "unknown symbol"),
        (control.set_price("BTCUSDT", "-1"), "positive"),
        (control.set_price("BTCUSDT", "abc"), "price"),
        (control.close_position("k1", "BTCUSDT"), "no open"),
        (control.add_fault("GET /fapi/v1/time", "explode"), "kind"),
        (control.add_fault("fetch tickers", "http"), "route"),
        (control.add_fault("GET /_sim/requests", "rate_limit"), "exchange path"),
        (control.add_fault("GET /fapi/v1/time", "error"), "code"),
        (control.add_fault("GET /fapi/v1/time", "http", 0), "count"),
        (control.settings(bybit_reduce_only_code=1), "bybit_reduce_only_code"),
        (control.positions(""), "api_key"),
    ]
    for call, message in bad_calls:
        with pytest.raises(SimulatorControlError, match=message):
            await call


async def test_reset_restores_a_fresh_simulator(ex: Exchange, control: SimulatorControl) -> None:
    await market_order(ex, "buy", 0.01, "r-1")
    await control.set_price("BTCUSDT", "1000")
    await control.add_fault("GET /fapi/v1/time", "http")
    await control.reset()
    assert await control.orders() == [] and await control.requests() == []
    assert await control.faults() == [] and await control.positions("k1") == []
    assert (await ex.fetch_ticker(BTC))["last"] == 60000
    assert (await ex.fetch_balance())["USDT"]["total"] == 10000


async def test_both_protocols_share_one_port(make_exchange: MakeExchange, control: SimulatorControl) -> None:
    binance, bybit = make_exchange("binanceusdm", "kb"), make_exchange("bybit", "ky")
    await market_order(binance, "buy", 0.01, "same-id")
    await market_order(bybit, "sell", 1, "same-id", symbol="SOL/USDT:USDT")
    assert [p["quantity"] for p in await control.positions("kb")] == [Decimal("0.01")]
    assert [(p["symbol"], p["quantity"]) for p in await control.positions("ky")] == [("SOLUSDT", Decimal("-1"))]


# ---------------------------------------------------------------------------------------- helper and CLI


def test_point_to_local_is_per_instance() -> None:
    local = point_to_local(ccxt.binanceusdm({"apiKey": "k", "secret": "s"}), "http://127.0.0.1:1")
    real = ccxt.binanceusdm()
    assert local.urls["api"]["fapiPrivate"] == "http://127.0.0.1:1/fapi/v1"
    assert local.urls["api"]["sapi"] == "http://127.0.0.1:1/sapi/v1"
    assert real.urls["api"]["fapiPrivate"] == "https://fapi.binance.com/fapi/v1"
    assert "leverageBrackets" not in real.options or real.options["leverageBrackets"] is None
    with pytest.raises(ccxt.NotSupported):  # the sandbox switch cannot restore real testnet hosts
        local.set_sandbox_mode(True)
    bybit = point_to_local(ccxt.bybit(), "http://localhost:2/")
    assert set(bybit.urls["api"].values()) == {"http://localhost:2"}
    assert ccxt.bybit().has["fetchCurrencies"] is True
    with pytest.raises(ValueError, match="base_url"):
        point_to_local(ccxt.bybit(), "localhost:2")
    with pytest.raises(ValueError, match="okx"):
        point_to_local(ccxt.okx(), "http://127.0.0.1:1")


async def test_standalone_process_serves_ccxt() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "egis.simulator",
        "--exchange",
        "bybit",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 15)).decode().strip()
        assert line.startswith("simulator bybit listening on http://127.0.0.1:")
        ex = point_to_local(ccxt.bybit({"enableRateLimit": False}), line.rsplit(" ", 1)[1])
        try:
            assert (await ex.fetch_ticker(BTC))["last"] == 60000
        finally:
            await ex.close()
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0


async def test_standalone_rejects_bad_arguments() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "egis.simulator",
        "--exchange",
        "kraken",
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 2 and b"invalid choice: 'kraken'" in stderr


async def test_time_and_price_endpoints(ex: Exchange, sim: SimulatorServer, control: SimulatorControl) -> None:
    await control.set_price("SOLUSDT", "151.25")
    assert abs(await ex.fetch_time() - time.time() * 1000) < 5000
    if ex.id == "binanceusdm":
        assert (await ex.fetch_mark_price("SOL/USDT:USDT"))["markPrice"] == 151.25
        assert (await ex.fetch_last_prices(["SOL/USDT:USDT"]))["SOL/USDT:USDT"]["price"] == 151.25
        assert routes_since(sim, 1)[-2:] == ["GET /fapi/v1/premiumIndex", "GET /fapi/v2/ticker/price"]
    else:
        assert (await ex.fetch_ticker("SOL/USDT:USDT"))["info"]["markPrice"] == "151.25"
