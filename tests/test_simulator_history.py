# ruff: noqa: F811 (pytest fixtures imported from tests/test_simulator.py are redefined as parameters)
"""History and look-ups answer like the real venues, through the real ccxt clients: 7-day trade windows,
execution types (liquidation, ADL), Bybit's realtime cache and delayed history, Binance's look-up horizons,
and the simulator's time travel (aging an account, skewing the clock).

Fixtures and helpers come from tests/test_simulator.py.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import ccxt.async_support as ccxt
import pytest

from egis.simulator import SimulatorControl, SimulatorServer
from egis.simulator.core import OrderStatus, Side
from tests.test_simulator import (  # noqa: F401 (fixtures)
    BTC,
    MakeExchange,
    control,
    find_by_client_id,
    make_exchange,
    market_order,
    sim,
)

DAY_S = 86_400
DAY_MS = DAY_S * 1000


def now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------------------------------- trade windows


async def test_bybit_executions_are_limited_to_seven_days(
    make_exchange: MakeExchange, control: SimulatorControl
) -> None:
    ex = make_exchange("bybit")
    await market_order(ex, "buy", 0.01, "old-open")
    await control.age_account("k1", 8 * DAY_S)  # that trade is now 8 days old
    await market_order(ex, "sell", 0.01, "new-close")

    # no window: the last 7 days only
    assert [t["info"]["orderLinkId"] for t in await ex.fetch_my_trades(BTC)] == ["new-close"]
    # only startTime: [since, since + 7 days], which here misses the recent trade
    since = now_ms() - 9 * DAY_MS
    assert [t["info"]["orderLinkId"] for t in await ex.fetch_my_trades(BTC, since)] == ["old-open"]
    # only endTime: [until - 7 days, until]
    until = now_ms() - 2 * DAY_MS
    assert [t["info"]["orderLinkId"] for t in await ex.fetch_my_trades(BTC, None, None, {"until": until})] == [
        "old-open"
    ]
    with pytest.raises(ccxt.BadRequest, match="cannot exceed 7 days"):
        await ex.fetch_my_trades(BTC, now_ms() - 10 * DAY_MS, None, {"until": now_ms()})


async def test_binance_user_trades_are_limited_to_seven_days(
    make_exchange: MakeExchange, control: SimulatorControl
) -> None:
    ex = make_exchange("binanceusdm")
    await market_order(ex, "buy", 0.002, "old-open")
    await control.age_account("k1", 8 * DAY_S)
    await market_order(ex, "sell", 0.002, "new-close")
    order_ids = {o["order_id"]: o["client_order_id"] for o in await control.orders("k1")}

    def names(trades: list[dict]) -> list[str]:  # type: ignore[type-arg]
        return [order_ids[int(t["info"]["orderId"])] for t in trades]

    assert names(await ex.fetch_my_trades(BTC)) == ["new-close"]  # neither bound: the last 7 days
    # since over a week ago: ccxt adds endTime = since + 7 days
    assert names(await ex.fetch_my_trades(BTC, now_ms() - 9 * DAY_MS)) == ["old-open"]
    # startTime alone (sent raw): clamped to [startTime, startTime + 7 days]
    rows = await ex.fapiPrivateGetUserTrades({"symbol": "BTCUSDT", "startTime": now_ms() - 9 * DAY_MS})
    assert names([{"info": r} for r in rows]) == ["old-open"]
    with pytest.raises(ccxt.BadRequest, match=r"-4165.*Maximum time interval is 7 days"):
        await ex.fetch_my_trades(BTC, now_ms() - 10 * DAY_MS, None, {"until": now_ms()})
    with pytest.raises(ccxt.ExchangeError, match="-1128"):  # fromId cannot be sent with startTime
        await ex.fapiPrivateGetUserTrades({"symbol": "BTCUSDT", "fromId": 1, "startTime": now_ms() - DAY_MS})
    await control.age_account("k1", 200 * DAY_S)  # "Only support querying trade in the past 6 months"
    assert await ex.fetch_my_trades(BTC, now_ms() - 208 * DAY_MS) == []


# ---------------------------------------------------------------------------------------- liquidation and ADL


async def test_bybit_liquidation_and_adl_are_bust_and_adl_trades(
    make_exchange: MakeExchange, control: SimulatorControl
) -> None:
    ex = make_exchange("bybit")
    await market_order(ex, "buy", 0.03, "open")
    fill = await control.auto_deleverage("k1", "BTCUSDT", "0.01", price="61000")
    assert fill["order"]["source"] == "adl" and fill["trade"]["realized_pnl"] == Decimal("10")
    await control.liquidate("k1", "BTCUSDT", price="50000")
    assert await control.positions("k1") == []

    # ccxt's fetch_my_trades sends execType=Trade: the exchange's own closes are not there
    assert [t["info"]["orderLinkId"] for t in await ex.fetch_my_trades(BTC)] == ["open"]
    rows = (await ex.privateGetV5ExecutionList({"category": "linear", "symbol": "BTCUSDT"}))["result"]["list"]
    assert [(r["execType"], r["createType"], r["execQty"]) for r in rows] == [
        ("BustTrade", "CreateByTakeOver_PassThrough", "0.02"),
        ("AdlTrade", "CreateByAdl_PassThrough", "0.01"),
        ("Trade", "CreateByUser", "0.03"),
    ]
    only_adl = await ex.privateGetV5ExecutionList({"category": "linear", "symbol": "BTCUSDT", "execType": "AdlTrade"})
    assert [r["execPrice"] for r in only_adl["result"]["list"]] == ["61000"]
    assert [t["source"] for t in await control.trades("k1")] == ["api", "adl", "liquidation"]
    assert [o["client_order_id"] for o in await control.orders("k1")] == ["open"]  # not API orders


async def test_binance_liquidation_and_adl_orders_are_autoclose_orders(
    make_exchange: MakeExchange, control: SimulatorControl
) -> None:
    ex = make_exchange("binanceusdm")
    await market_order(ex, "sell", 0.004, "short")
    adl = await control.auto_deleverage("k1", "BTCUSDT", "0.002")
    liquidation = await control.liquidate("k1", "BTCUSDT", price="70000")
    by_adl = await ex.fetch_order(str(adl["order"]["id"]), BTC)
    by_liq = await ex.fetch_order(str(liquidation["order"]["id"]), BTC)
    assert by_adl["clientOrderId"] == "adl_autoclose" and by_adl["info"]["type"] == "LIMIT"
    assert by_liq["clientOrderId"].startswith("autoclose-") and by_liq["info"]["timeInForce"] == "IOC"
    assert by_liq["average"] == 70000 and by_liq["side"] == "buy"
    forced = await ex.fapiPrivateGetForceOrders({"symbol": "BTCUSDT"})
    assert [o["clientOrderId"][:9] for o in forced] == ["adl_autoc", "autoclose"]
    only_liquidations = await ex.fapiPrivateGetForceOrders({"autoCloseType": "LIQUIDATION"})
    assert [o["orderId"] for o in only_liquidations] == [liquidation["order"]["id"]]
    trades = await ex.fetch_my_trades(BTC)  # Binance's trade list has no execution type: all three
    assert [Decimal(t["info"]["realizedPnl"]) for t in trades] == [Decimal(0), Decimal(0), Decimal("-20")]


# ---------------------------------------------------------------------------------------- Bybit look-ups


async def test_bybit_realtime_keeps_the_last_closed_orders_and_history_is_delayed(
    make_exchange: MakeExchange, control: SimulatorControl
) -> None:
    ex = make_exchange("bybit")
    await control.settings(bybit_realtime_closed_cap=3, bybit_history_delay_ms=300)
    for n in range(4):
        await market_order(ex, "buy", 0.01, f"o-{n}")

    async def realtime(link_id: str) -> list[str]:
        answer = await ex.privateGetV5OrderRealtime({"category": "linear", "symbol": "BTCUSDT", "orderLinkId": link_id})
        return [o["orderLinkId"] for o in answer["result"]["list"]]

    async def history(link_id: str) -> list[str]:
        answer = await ex.privateGetV5OrderHistory({"category": "linear", "symbol": "BTCUSDT", "orderLinkId": link_id})
        return [o["orderLinkId"] for o in answer["result"]["list"]]

    assert await realtime("o-0") == [] and await realtime("o-3") == ["o-3"]  # only the last 3 closed orders
    assert await history("o-3") == []  # history is asynchronous: not there yet
    await asyncio.sleep(0.4)
    assert await history("o-0") == ["o-0"] and await history("o-3") == ["o-3"]
    openonly = await ex.privateGetV5OrderRealtime({"category": "linear", "symbol": "BTCUSDT", "openOnly": 1})
    assert [o["orderLinkId"] for o in openonly["result"]["list"]] == ["o-3", "o-2", "o-1"]
    assert (await ex.privateGetV5OrderRealtime({"category": "linear", "symbol": "BTCUSDT"}))["result"]["list"] == []

    assert await control.forget_realtime_orders() == 1  # a Bybit restart
    assert await realtime("o-3") == []
    assert await history("o-3") == ["o-3"]
    with pytest.raises(ccxt.OrderNotFound):  # ccxt's look-up by orderLinkId reads realtime only
        await find_by_client_id(ex, "o-3")
    await market_order(ex, "buy", 0.01, "o-4")
    assert await realtime("o-4") == ["o-4"]


async def test_bybit_history_keeps_seven_days_and_older_filled_orders(
    make_exchange: MakeExchange, sim: SimulatorServer, control: SimulatorControl
) -> None:
    ex = make_exchange("bybit")
    await control.settings(bybit_history_delay_ms=0)
    await market_order(ex, "buy", 0.01, "filled")
    sim.core.record_unfilled_order("k1", "BTCUSDT", Side.BUY, Decimal("0.01"), client_order_id="unfilled")
    await control.age_account("k1", 8 * DAY_S)

    async def history(**window: int) -> list[str]:
        query = {"category": "linear", "symbol": "BTCUSDT", **window}
        return [o["orderLinkId"] for o in (await ex.privateGetV5OrderHistory(query))["result"]["list"]]

    assert await history() == []  # default: the past 7 days
    start = now_ms() - 9 * DAY_MS
    assert await history(startTime=start, endTime=start + 2 * DAY_MS) == ["filled"]  # beyond 7 days: filled only
    with pytest.raises(ccxt.BadRequest, match="passed together"):
        await history(startTime=start)
    with pytest.raises(ccxt.BadRequest, match="cannot exceed 7 days"):
        await history(startTime=start, endTime=now_ms())


# ---------------------------------------------------------------------------------------- Binance look-ups


async def test_binance_order_lookup_horizons(
    make_exchange: MakeExchange, sim: SimulatorServer, control: SimulatorControl
) -> None:
    ex = make_exchange("binanceusdm")
    await market_order(ex, "buy", 0.002, "filled")
    sim.core.record_unfilled_order("k1", "BTCUSDT", Side.BUY, Decimal("0.002"), client_order_id="expired")
    await control.age_account("k1", 2 * DAY_S)
    assert (await find_by_client_id(ex, "expired"))["status"] == "expired"
    await control.age_account("k1", 2 * DAY_S)  # 4 days: an unfilled EXPIRED order is gone
    with pytest.raises(ccxt.OrderNotFound):
        await find_by_client_id(ex, "expired")
    assert (await find_by_client_id(ex, "filled"))["filled"] == 0.002
    await control.age_account("k1", 87 * DAY_S)  # 91 days: every order is gone
    with pytest.raises(ccxt.OrderNotFound):
        await find_by_client_id(ex, "filled")
    assert await ex.fetch_orders(BTC) == []


async def test_record_unfilled_order_refuses_filled(sim: SimulatorServer) -> None:
    with pytest.raises(ValueError, match="FILLED"):
        sim.core.record_unfilled_order("k1", "BTCUSDT", Side.BUY, Decimal(1), status=OrderStatus.FILLED)


# ---------------------------------------------------------------------------------------- clock


@pytest.mark.parametrize("exchange_id", ["binanceusdm", "bybit"])
async def test_a_skewed_server_clock_refuses_requests_until_the_client_syncs(
    exchange_id: str, make_exchange: MakeExchange, control: SimulatorControl
) -> None:
    ex = make_exchange(exchange_id)
    await ex.load_markets()
    await control.settings(clock_offset_ms=30_000)  # the venue's clock is 30 s ahead of ours
    assert abs(await ex.fetch_time() - (now_ms() + 30_000)) < 5_000
    expected = {
        "binanceusdm": "-1021.*outside of the recvWindow",
        "bybit": r"10002.*req_timestamp\[\d+\],server_timestamp\[\d+\],recv_window\[5000\]",
    }[exchange_id]
    with pytest.raises(ccxt.InvalidNonce, match=expected):
        await ex.fetch_balance()
    await ex.load_time_difference()  # what adjustForTimeDifference would do
    assert (await ex.fetch_balance())["USDT"]["total"] == 10000
    if exchange_id == "binanceusdm":
        await control.settings(clock_offset_ms=-5_000)  # now the client is 5 s ahead of the venue
        with pytest.raises(ccxt.InvalidNonce, match=r"-1021.*ahead of the server.s time"):
            await ex.fetch_balance()


async def test_age_account_validates(control: SimulatorControl, make_exchange: MakeExchange) -> None:
    from egis.simulator import SimulatorControlError

    with pytest.raises(SimulatorControlError, match="no account"):
        await control.age_account("nobody", 10)
    await market_order(make_exchange("bybit"), "buy", 0.01, "a")
    with pytest.raises(SimulatorControlError, match="negative"):
        await control.age_account("k1", -1)
    assert await control.age_account("k1", 1) == {"orders": 1, "trades": 1, "positions": 1}
