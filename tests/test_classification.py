"""Every row of the error-classification table, produced by a REAL ccxt call against a simulator
with that fault injected (or that situation set up), and classified as the table says."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from egis.exchanges.base import ExchangeCallError, Gateway, OrderRequest
from egis.exchanges.registry import Gateways
from egis.models import ErrorClass, Exchange, Intent, OrderSide, Side
from egis.rules.classify import TABLE, classify
from egis.simulator.control import SimulatorControl
from tests.conftest import ACCOUNTS, SIM_KEYS

ORDER_ROUTE = {"binanceusdm": "POST /fapi/v1/order", "bybit": "POST /v5/order/create"}
READ_ROUTE = {"binanceusdm": "GET /fapi/v3/positionRisk", "bybit": "GET /v5/position/list"}


@dataclass(frozen=True)
class Recipe:
    rule: str
    exchange: str
    operation: str  # open | close | read
    fault: dict[str, Any] = field(default_factory=dict)  # SimulatorControl.add_fault kwargs (route implied)
    setup: str | None = None  # "position": hold a long first; "duplicate": send the client id twice;
    # "bybit_170131": select Bybit's other reduce-only answer (seed 003's); "huge": an open far beyond the balance


RECIPES = [
    Recipe("bybit-170131-close", "bybit", "close", setup="bybit_170131"),  # as seed 003's bot saw it
    Recipe("bybit-110017-close", "bybit", "close"),  # the venue's default answer
    Recipe("binance-2022-close", "binanceusdm", "close"),
    Recipe(
        "binance-2019-close", "binanceusdm", "close", {"kind": "error", "code": -2019, "msg": "Margin is insufficient."}
    ),
    Recipe("paper-reduce-only-close", "paper", "close"),
    Recipe(
        "insufficient-close", "bybit", "close", {"kind": "error", "code": 110007, "msg": "ab not enough for new order"}
    ),
    # Binance refuses a duplicate id only among OPEN orders (a market order never rests): the setting
    # stands in for an id still held by an open order
    Recipe("binance-4116-duplicate", "binanceusdm", "open", setup="duplicate_open"),
    Recipe("bybit-110072-duplicate", "bybit", "open", setup="duplicate"),
    Recipe(
        "binance-unknown-status",
        "binanceusdm",
        "open",
        {
            "kind": "error",
            "code": -1007,
            "msg": "Timeout waiting for response from backend server. Send status unknown; execution status unknown.",
        },
    ),
    Recipe(
        "binance-unknown-status",
        "binanceusdm",
        "close",
        {
            "kind": "error",
            "http_status": 500,
            "code": -1006,
            "msg": "An unexpected response was received from the message bus. Execution status unknown.",
        },
        setup="position",
    ),
    Recipe("timeout-after-send", "binanceusdm", "open", {"kind": "timeout", "seconds": 3}),
    Recipe("timeout-after-send", "bybit", "close", {"kind": "accept_then_timeout", "seconds": 3}, setup="position"),
    Recipe(
        "unavailable-after-send",
        "binanceusdm",
        "close",
        {"kind": "http", "http_status": 502, "body": "<html>Bad Gateway</html>"},
        setup="position",
    ),
    Recipe(
        "unavailable-after-send", "bybit", "open", {"kind": "http", "http_status": 503, "body": "Service Unavailable."}
    ),
    Recipe("rate-limited", "bybit", "open", {"kind": "rate_limit"}),
    Recipe(
        "rate-limited",
        "binanceusdm",
        "read",
        {"kind": "error", "http_status": 400, "code": -1003, "msg": "Too many requests."},
    ),
    Recipe("ddos-protection", "binanceusdm", "open", {"kind": "rate_limit"}),
    Recipe(
        "clock-skew",
        "binanceusdm",
        "close",
        {"kind": "error", "code": -1021, "msg": "Timestamp for this request is outside of the recvWindow."},
        setup="position",
    ),
    Recipe(
        "clock-skew",
        "bybit",
        "read",
        {
            "kind": "error",
            "code": 10002,
            "msg": "invalid request, please check your server timestamp or recv_window param",
        },
    ),
    Recipe(
        "operation-failed-after-send",
        "binanceusdm",
        "open",
        {
            "kind": "error",
            "http_status": 503,
            "code": -1001,
            "msg": "Internal error; unable to process your request. Please try again.",
        },
    ),
    Recipe(
        "network-read", "binanceusdm", "read", {"kind": "http", "http_status": 500, "body": "Internal Server Error"}
    ),
    Recipe("network-read", "bybit", "read", {"kind": "timeout", "seconds": 3}),
    Recipe(
        "bybit-10016-after-send", "bybit", "open", {"kind": "error", "code": 10016, "msg": "Internal system error."}
    ),
    Recipe("bybit-10016-read", "bybit", "read", {"kind": "error", "code": 10016, "msg": "Internal system error."}),
    Recipe(
        "authentication",
        "binanceusdm",
        "open",
        {"kind": "error", "http_status": 401, "code": -2015, "msg": "Invalid API-key, IP, or permissions for action."},
    ),
    Recipe("authentication", "bybit", "read", {"kind": "error", "code": 10003, "msg": "API key is invalid."}),
    Recipe("insufficient-open", "binanceusdm", "open", setup="huge"),
    Recipe("insufficient-open", "bybit", "open", setup="huge"),
    Recipe("bad-symbol", "binanceusdm", "open", {"kind": "error", "code": -1121, "msg": "Invalid symbol."}),
    Recipe(
        "invalid-order",
        "binanceusdm",
        "open",
        {"kind": "error", "code": -4164, "msg": "Order's notional must be no smaller than 5.0"},
    ),
    Recipe(
        "invalid-order", "bybit", "open", {"kind": "error", "code": 110017, "msg": "reduce-only rule not satisfied"}
    ),
    Recipe("exchange-error", "bybit", "open", {"kind": "error", "code": 99999, "msg": "Something new."}),
]


def test_every_table_row_has_a_recipe() -> None:
    assert {r.id for r in TABLE} == {r.rule for r in RECIPES}


def _order(intent: Intent, cid: str, quantity: str = "0.01") -> OrderRequest:
    side = OrderSide.BUY if intent is Intent.OPEN else OrderSide.SELL
    return OrderRequest(intent, "BTCUSDT", side, Decimal(quantity), intent is Intent.CLOSE, cid)


async def _run(gateway: Gateway, operation: str, cid: str, quantity: str = "0.01") -> None:
    if operation == "read":
        await gateway.fetch_position("BTCUSDT", Side.LONG)
    else:
        await gateway.create_order(_order(Intent(operation), cid, quantity))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: f"{r.rule}[{r.exchange}:{r.operation}]")
async def test_classification_row_from_a_real_call(
    recipe: Recipe, deps: Any, sim_control: SimulatorControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateways: Gateways = deps.gateways
    gateway = await gateways.get(Exchange(recipe.exchange), ACCOUNTS[recipe.exchange])
    await gateway.load_markets()
    quantity = "0.01"
    if recipe.setup and recipe.setup.startswith("position"):
        await gateway.create_order(_order(Intent.OPEN, "setup-open"))
    if recipe.setup == "duplicate_open":
        await sim_control.settings(binance_reject_reused_client_id=True)
    if recipe.setup in ("duplicate", "duplicate_open"):
        await gateway.create_order(_order(Intent.OPEN, "dup-1"))
    if recipe.setup == "bybit_170131":
        await sim_control.settings(bybit_reduce_only_code=170131)
    if recipe.setup == "huge":
        quantity = "100"  # 100 BTC at 60,000 against a 10,000 USDT wallet
    if recipe.fault:
        route = (READ_ROUTE if recipe.operation == "read" else ORDER_ROUTE)[recipe.exchange]
        await sim_control.add_fault(route, api_key=SIM_KEYS[recipe.exchange][0], **recipe.fault)
    cid = "dup-1" if recipe.setup in ("duplicate", "duplicate_open") else "probe-1"
    with pytest.raises(ExchangeCallError) as info:
        await _run(gateway, recipe.operation, cid, quantity)
    verdict = info.value.classify()
    expected = next(r for r in TABLE if r.id == recipe.rule)
    assert (verdict.rule, verdict.outcome) == (expected.id, expected.outcome), str(info.value)


def test_operation_decides_between_verify_and_permanent() -> None:
    """The same answer means different things for an open and for a reduce-only close."""
    names = ["InsufficientFunds", "ExchangeError", "BaseError"]
    assert classify("bybit", names, "170131", "close").outcome is ErrorClass.VERIFY
    assert classify("bybit", names, "170131", "open").outcome is ErrorClass.PERMANENT
    timeout = ["RequestTimeout", "NetworkError", "OperationFailed", "BaseError"]
    assert classify("binanceusdm", timeout, None, "open").outcome is ErrorClass.VERIFY
    assert classify("binanceusdm", timeout, None, "read").outcome is ErrorClass.TRANSIENT


def test_hierarchy_traps() -> None:
    """OperationFailed is not a NetworkError; RateLimitExceeded and DDoSProtection are siblings."""
    op_failed = ["OperationFailed", "BaseError"]
    assert classify("binanceusdm", op_failed, "-1001", "read").outcome is ErrorClass.TRANSIENT
    assert classify("binanceusdm", op_failed, "-1001", "close").outcome is ErrorClass.VERIFY
    for sibling in ("RateLimitExceeded", "DDoSProtection"):
        names = [sibling, "NetworkError", "OperationFailed", "BaseError"]
        assert classify("bybit", names, None, "close").outcome is ErrorClass.TRANSIENT
