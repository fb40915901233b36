# ruff: noqa: F811 (pytest fixtures imported from tests/test_simulator.py are redefined as parameters)
"""The simulator's order rules answer like the real venues by default, through the real ccxt clients:
reduce-only codes, minimum order values, client order ids, Binance's NEW answer, hedge mode.

Fixtures and helpers come from tests/test_simulator.py (a fresh simulator per test, ccxt clients whose
API keys are registered with it).
"""

from __future__ import annotations

from decimal import Decimal

import ccxt.async_support as ccxt
import pytest
from ccxt.async_support.base.exchange import Exchange

from egis.simulator import SimulatorControl, SimulatorControlError, SimulatorServer
from tests.test_simulator import (  # noqa: F401 (fixtures)
    BTC,
    ETH,
    MakeExchange,
    control,
    ex,
    find_by_client_id,
    make_exchange,
    market_order,
    sim,
)

SOL = "SOL/USDT:USDT"
DOGE = "DOGE/USDT:USDT"


async def positions_of(ex: Exchange, symbol: str = BTC) -> list[tuple[str, float]]:
    return sorted((p["side"], p["contracts"]) for p in await ex.fetch_positions([symbol]) if p["contracts"])


# ---------------------------------------------------------------------------------------- reduce-only


async def test_bybit_reduce_only_on_the_position_side_is_110017_same_side(
    make_exchange: MakeExchange, control: SimulatorControl
) -> None:
    ex = make_exchange("bybit")
    await market_order(ex, "buy", 0.01, "long-1")
    with pytest.raises(ccxt.InvalidOrder, match="reduce-only order has same side with current position"):
        await market_order(ex, "buy", 0.01, "long-2", reduceOnly=True)
    assert (await control.orders("k1"))[-1]["error_code"] == 110017


# ---------------------------------------------------------------------------------------- minimums


async def test_binance_min_notional_is_the_real_per_symbol_value_and_spares_reduce_only(
    make_exchange: MakeExchange, control: SimulatorControl
) -> None:
    ex = make_exchange("binanceusdm")
    await ex.load_markets()
    assert ex.market(ETH)["limits"]["cost"]["min"] == 20 and ex.market(SOL)["limits"]["cost"]["min"] == 5
    with pytest.raises(ccxt.InvalidOrder, match=r"-4164.*no smaller than 100 \(unless you choose reduce only\)"):
        await market_order(ex, "buy", 0.001, "small-btc")  # 60 USDT
    with pytest.raises(ccxt.InvalidOrder, match="no smaller than 20"):
        await market_order(ex, "buy", 0.005, "small-eth", symbol=ETH)  # 15 USDT
    await market_order(ex, "buy", 0.002, "btc-120")  # 120 USDT
    await market_order(ex, "sell", 0.001, "ro-60", reduceOnly=True)  # 60 USDT, reduce-only: exempt
    assert [(e["client_order_id"], e["error_code"]) for e in await control.orders("k1")] == [
        ("small-btc", -4164),
        ("small-eth", -4164),
        ("btc-120", None),
        ("ro-60", None),
    ]
    assert [p["quantity"] for p in await control.positions("k1")] == [Decimal("0.001")]


async def test_bybit_minimums_closing_orders_keep_the_minimum_size_only(
    make_exchange: MakeExchange, control: SimulatorControl
) -> None:
    """Bybit: "Closing orders are exempt from notional value but still adhere to minimum size"; a remainder
    below minOrderQty closes with qty "0", reduceOnly and closeOnTrigger."""
    ex = make_exchange("bybit")
    await control.settings(bybit_endpoint_limit=100)  # more than the real 10 orders per second follow
    with pytest.raises(ccxt.InvalidOrder, match="110094"):
        await market_order(ex, "buy", 20, "doge-4usdt", symbol=DOGE)  # 4 USDT < minNotionalValue 5
    with pytest.raises(ccxt.BadRequest, match=r"10001.*exceeds minimum limit allowed"):
        await ex.privatePostV5OrderCreate(  # 0.5 SOL < minOrderQty 1 (unified create_order would round it)
            {"category": "linear", "symbol": "SOLUSDT", "side": "Buy", "orderType": "Market", "qty": "0.5"}
        )
    await market_order(ex, "buy", 30, "doge-open", symbol=DOGE)  # 6 USDT
    await control.reduce_position("k1", "DOGEUSDT", "10")  # 20 DOGE = 4 USDT left
    await market_order(ex, "sell", 20, "doge-close", symbol=DOGE, reduceOnly=True)  # exempt from the value

    await market_order(ex, "buy", 1.8, "sol-open", symbol=SOL)
    await control.reduce_position("k1", "SOLUSDT", "0.9")  # a partial stop leaves 0.9 < minOrderQty
    with pytest.raises(ccxt.BadRequest, match="exceeds minimum limit allowed"):
        await market_order(ex, "sell", 0.9, "sol-close", symbol=SOL, reduceOnly=True)
    close_all = {"category": "linear", "symbol": "SOLUSDT", "side": "Sell", "orderType": "Market", "qty": "0"}
    await ex.privatePostV5OrderCreate(close_all | {"reduceOnly": True, "closeOnTrigger": True, "orderLinkId": "sol-0"})
    assert await control.positions("k1") == []
    codes = [(e["client_order_id"], e["error_code"], e["reason"]) for e in await control.orders("k1")]
    assert codes == [
        ("doge-4usdt", 110094, "notional_too_small"),
        (None, 10001, "qty_too_small"),
        ("doge-open", None, None),
        ("doge-close", None, None),
        ("sol-open", None, None),
        ("sol-close", 10001, "qty_too_small"),
        ("sol-0", None, None),
    ]
    assert [t["quantity"] for t in await control.trades("k1")][-1] == Decimal("0.9")

    await control.settings(bybit_reduce_only_min_notional_exempt=False, bybit_reduce_only_min_qty_exempt=True)
    await market_order(ex, "buy", 1.8, "sol-open-2", symbol=SOL)
    await control.reduce_position("k1", "SOLUSDT", "0.9")
    await market_order(ex, "sell", 0.9, "sol-close-2", symbol=SOL, reduceOnly=True)  # qty exemption on
    await market_order(ex, "buy", 30, "doge-open-2", symbol=DOGE)
    await control.reduce_position("k1", "DOGEUSDT", "10")
    with pytest.raises(ccxt.InvalidOrder, match="110094"):  # notional exemption off
        await market_order(ex, "sell", 20, "doge-close-2", symbol=DOGE, reduceOnly=True)


# ---------------------------------------------------------------------------------------- Binance answer


async def test_binance_market_order_answer_new_then_filled_on_query(
    make_exchange: MakeExchange, control: SimulatorControl
) -> None:
    ex = make_exchange("binanceusdm")
    created = await market_order(ex, "buy", 0.002, "result-1")  # ccxt sends newOrderRespType=RESULT
    assert created["status"] == "closed" and created["filled"] == 0.002

    # without newOrderRespType the venue's default is ACK: NEW, nothing executed yet
    raw = await ex.fapiPrivatePostOrder(
        {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.002", "newClientOrderId": "ack-1"}
    )
    assert (raw["status"], raw["executedQty"], raw["avgPrice"]) == ("NEW", "0", "0.00")
    assert (await find_by_client_id(ex, "ack-1"))["status"] == "closed"

    await control.settings(binance_market_new_answer=True)  # NEW even with RESULT
    created = await market_order(ex, "buy", 0.002, "new-1")
    assert created["status"] == "open" and created["filled"] == 0
    queried = await find_by_client_id(ex, "new-1")
    assert queried["status"] == "closed" and queried["filled"] == 0.002 and queried["average"] == 60000


# ---------------------------------------------------------------------------------------- hedge mode


async def test_binance_hedge_mode(make_exchange: MakeExchange, control: SimulatorControl) -> None:
    ex = make_exchange("binanceusdm")
    assert (await ex.fapiPrivateGetPositionSideDual())["dualSidePosition"] is False
    with pytest.raises(ccxt.ExchangeError, match="-4059"):  # already one-way
        await ex.set_position_mode(False)
    await ex.set_position_mode(True)
    assert (await ex.fapiPrivateGetPositionSideDual())["dualSidePosition"] is True
    with pytest.raises(ccxt.ExchangeError, match="-4061"):  # hedge mode: positionSide is required
        await market_order(ex, "buy", 0.002, "no-side")
    await market_order(ex, "buy", 0.002, "long", positionSide="LONG")
    await market_order(ex, "sell", 0.003, "short", positionSide="SHORT")
    assert await positions_of(ex) == [("long", 0.002), ("short", 0.003)]
    rows = await ex.fapiPrivateV2GetPositionRisk({"symbol": "BTCUSDT"})
    assert sorted((r["positionSide"], r["positionAmt"]) for r in rows) == [("LONG", "0.002"), ("SHORT", "-0.003")]
    with pytest.raises(ccxt.BadRequest, match="-1106"):  # reduceOnly cannot be sent in hedge mode
        await market_order(ex, "sell", 0.002, "ro", positionSide="LONG", reduceOnly=True)
    with pytest.raises(ccxt.ExchangeError, match="-4068"):  # no switch with a position open
        await ex.set_position_mode(False)
    await market_order(ex, "sell", 0.002, "close-long", positionSide="LONG")  # closes the long only
    assert await positions_of(ex) == [("short", 0.003)]
    trades = await ex.fetch_my_trades(BTC)
    assert [t["info"]["positionSide"] for t in trades] == ["LONG", "SHORT", "LONG"]
    log = [(e["client_order_id"], e["position_side"], e["error_code"]) for e in await control.orders("k1")]
    assert log[0] == ("no-side", None, -4061) and log[-1] == ("close-long", "LONG", None)


async def test_bybit_hedge_mode(make_exchange: MakeExchange, control: SimulatorControl) -> None:
    ex = make_exchange("bybit")
    await ex.load_markets()
    await ex.set_position_mode(True, BTC)  # POST /v5/position/switch-mode mode=3 for BTCUSDT
    with pytest.raises(ccxt.NoChange):  # 110025
        await ex.set_position_mode(True, BTC)
    with pytest.raises(ccxt.BadRequest, match="position idx not match position mode"):
        await market_order(ex, "buy", 0.01, "no-idx")
    await market_order(ex, "buy", 0.01, "long", hedged=True)  # ccxt sends positionIdx 1
    await market_order(ex, "sell", 0.02, "short", hedged=True)  # positionIdx 2
    rows = (await ex.privateGetV5PositionList({"category": "linear", "symbol": "BTCUSDT"}))["result"]["list"]
    assert [(r["positionIdx"], r["side"], r["size"]) for r in rows] == [(1, "Buy", "0.01"), (2, "Sell", "0.02")]
    assert await positions_of(ex) == [("long", 0.01), ("short", 0.02)]
    with pytest.raises(ccxt.BadRequest, match="110024"):  # a position is open
        await ex.set_position_mode(False, BTC)
    await market_order(ex, "buy", 0.02, "close-short", hedged=True, reduceOnly=True)  # positionIdx 2
    assert await positions_of(ex) == [("long", 0.01)]
    await market_order(ex, "buy", 0.01, "eth-one-way", symbol=ETH)  # ETHUSDT stayed one-way
    assert [(p["symbol"], p["side"]) for p in await control.positions("k1")] == [
        ("BTCUSDT", "LONG"),
        ("ETHUSDT", "BOTH"),
    ]


async def test_hedge_mode_through_the_control_api(make_exchange: MakeExchange, control: SimulatorControl) -> None:
    ex = make_exchange("binanceusdm")
    assert await control.set_position_mode("k1", True) == ["BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT", "CLOUDUSDT"]
    await market_order(ex, "buy", 0.002, "long", positionSide="LONG")
    await market_order(ex, "sell", 0.002, "short", positionSide="SHORT")
    with pytest.raises(SimulatorControlError, match="both sides"):
        await control.close_position("k1", "BTCUSDT")
    with pytest.raises(SimulatorControlError, match="has a position"):
        await control.set_position_mode("k1", False, "BTCUSDT")
    fill = await control.close_position("k1", "BTCUSDT", position_side="SHORT")
    assert fill["order"]["position_side"] == "SHORT" and fill["order"]["side"] == "BUY"
    assert await positions_of(ex) == [("long", 0.002)]
    assert await control.set_position_mode("k1", False) == ["ETHUSDT", "SOLUSDT", "DOGEUSDT", "CLOUDUSDT"]


async def test_new_settings_are_validated(control: SimulatorControl, sim: SimulatorServer) -> None:
    settings = await control.settings()
    assert settings["bybit_reduce_only_code"] == 110017 and settings["bybit_reduce_only_min_qty_exempt"] is False
    assert settings["bybit_reduce_only_min_notional_exempt"] is True
    assert settings["binance_reject_reused_client_id"] is False and settings["bybit_history_delay_ms"] == 500
    for bad, message in [
        ({"bybit_realtime_closed_cap": -1}, "not be negative"),
        ({"check_signatures": 1}, "true or false"),
        ({"binance_ban_seconds": 10**6}, "259200"),
        ({"no_such_setting": 1}, "unknown setting"),
        ({"fee_rate": "1.5"}, "fee_rate"),
    ]:
        with pytest.raises(SimulatorControlError, match=message):
            await control.settings(**bad)
    assert sim.core.settings.fee_rate == 0
