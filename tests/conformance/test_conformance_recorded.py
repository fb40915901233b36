"""What Egis concludes from REAL exchange answers.

Each test serves recorded answers (see each fixture's `_source`) to Egis's own `CcxtGateway` (real ccxt 4.5.90
client) and asserts what Egis makes of them: parsed Decimals, None for flat / not found, the `ExchangeCallError`
code and its classification. Where today's Egis behaviour is wrong for a real answer, the test states the correct
behaviour and is marked `xfail(strict=True)` with what must change.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import unquote

import pytest

from egis.exchanges.base import ExchangePosition, IncompleteRead, OrderReport, OrderRequest, Trade
from egis.models import ErrorClass, Exchange, Intent, OrderSide, Side
from tests.conformance.conftest import BN, BY, call_error
from tests.conformance.server import FixtureServer, fixture_body

D = Decimal
T, P, V = ErrorClass.TRANSIENT, ErrorClass.PERMANENT, ErrorClass.VERIFY
BTC, ETH, LTC = "BTCUSDT", "ETHUSDT", "LTCUSDT"

BN_ORDER = "/fapi/v1/order"
BN_POSITIONS = "/fapi/v3/positionRisk"
BN_TRADES = "/fapi/v1/userTrades"
BY_CREATE = "/v5/order/create"
BY_POSITIONS = "/v5/position/list"
BY_REALTIME = "/v5/order/realtime"
BY_HISTORY = "/v5/order/history"
BY_EXECUTIONS = "/v5/execution/list"


def order(intent: Intent, symbol: str, side: OrderSide, quantity: str, cid: str) -> OrderRequest:
    return OrderRequest(
        intent=intent,
        symbol=symbol,
        side=side,
        quantity=D(quantity),
        reduce_only=intent is Intent.CLOSE,
        client_order_id=cid,
    )


def open_long(symbol: str = BTC, quantity: str = "0.001", cid: str = "egis-o-1") -> OrderRequest:
    return order(Intent.OPEN, symbol, OrderSide.BUY, quantity, cid)


def close_long(symbol: str = BTC, quantity: str = "0.001", cid: str = "egis-c-1") -> OrderRequest:
    return order(Intent.CLOSE, symbol, OrderSide.SELL, quantity, cid)


def at_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


# ---------------------------------------------------------------------------------------------- markets


async def test_binance_load_markets_reads_the_recorded_filters(venue_gateway) -> None:
    gateway = venue_gateway(BN)
    markets = await gateway.load_markets()
    assert set(markets) == {BTC, ETH}  # BTCUSDT_220325 is a quarterly future, not a perpetual
    btc = markets[BTC]
    assert (btc.amount_step, btc.min_quantity, btc.max_quantity) == (D("0.001"), D("0.001"), D("1000"))
    assert (btc.min_notional, btc.price_tick) == (D("10"), D("0.10"))  # MIN_NOTIONAL was 10 in that capture (2022)


async def test_bybit_load_markets_reads_the_recorded_filters(venue_gateway, recorded: FixtureServer) -> None:
    gateway = venue_gateway(BY)
    markets = await gateway.load_markets()
    assert {BTC, LTC} <= set(markets)
    btc, ltc = markets[BTC], markets[LTC]
    assert (btc.amount_step, btc.min_quantity, btc.max_quantity) == (D("0.001"), D("0.001"), D("119.000"))
    assert (btc.min_notional, btc.price_tick) == (D("5"), D("0.10"))
    assert (ltc.amount_step, ltc.min_quantity, ltc.min_notional) == (D("0.1"), D("0.1"), D("5"))
    asked = [r.params.get("status") for r in recorded.requests("GET", "/v5/market/instruments-info")]
    assert sorted(asked, key=str) == sorted([None, "PreLaunch"], key=str)
    assert recorded.unanswered() == []


# ---------------------------------------------------------------------------------------------- positions


async def test_binance_open_position_parses_decimals(venue_gateway, recorded: FixtureServer) -> None:
    recorded.answer("GET", BN_POSITIONS, "binanceusdm/position_risk_open")
    gateway = venue_gateway(BN)
    assert await gateway.fetch_position(BTC, Side.LONG) == ExchangePosition(
        BTC, Side.LONG, D("0.009"), D("67445.9"), D("67582.20000000")
    )
    assert await gateway.fetch_position(BTC, Side.SHORT) is None
    assert await gateway.fetch_positions() == [ExchangePosition(BTC, Side.LONG, D("0.009"), D("67445.9"), D("67582.2"))]
    asked = [r.params.get("symbol") for r in recorded.requests("GET", BN_POSITIONS)]
    assert asked == ["BTCUSDT", "BTCUSDT", None]  # a symbol's read asks for it alone; the account's for all


@pytest.mark.parametrize("fixture", ["binanceusdm/position_risk_flat", "binanceusdm/position_risk_flat_row"])
async def test_binance_flat_position_is_none(venue_gateway, recorded: FixtureServer, fixture: str) -> None:
    recorded.answer("GET", BN_POSITIONS, fixture)
    gateway = venue_gateway(BN)
    assert await gateway.fetch_position(BTC, Side.LONG) is None
    assert await gateway.fetch_position(BTC, Side.SHORT) is None
    assert await gateway.fetch_positions() == []


async def test_binance_hedge_mode_rows_are_not_read_as_flat(venue_gateway, recorded: FixtureServer) -> None:
    """A hedge-mode row (positionSide LONG/SHORT) is a real position: reading it as flat would make a
    ghost of it. Egis reads it (and refuses to OPEN on such an account, tests/test_exchange_truth.py)."""
    recorded.answer("GET", BN_POSITIONS, "binanceusdm/position_risk_hedge_mode")
    gateway = venue_gateway(BN)
    position = await gateway.fetch_position(BTC, Side.LONG)
    assert position is not None and position.quantity == D("20.000")


def answer_last_page(recorded: FixtureServer, fixture: str) -> str:
    """The recorded answers carry a cursor on their only page: the page after it is the recorded empty list
    (Egis reads Bybit's position list to its end). The cursor as the venue reads it back: the token is already
    percent-encoded and ccxt puts it in the query string as it is (bybit.sign, rawencode)."""
    cursor = unquote(fixture_body(fixture)["result"]["nextPageCursor"])
    recorded.answer("GET", BY_POSITIONS, "bybit/position_list_empty", when={"cursor": cursor})
    return cursor


async def test_bybit_open_position_parses_decimals(venue_gateway, recorded: FixtureServer) -> None:
    recorded.answer("GET", BY_POSITIONS, "bybit/position_list_open")
    cursor = answer_last_page(recorded, "bybit/position_list_open")
    gateway = venue_gateway(BY)
    expected = ExchangePosition(LTC, Side.LONG, D("1.2"), D("64.59947917"), D("71.1"))
    assert await gateway.fetch_position(LTC, Side.LONG) == expected
    assert await gateway.fetch_position(LTC, Side.SHORT) is None
    assert await gateway.fetch_positions() == [expected]
    named, listed, after = [recorded.requests("GET", BY_POSITIONS)[i] for i in (0, -2, -1)]
    assert (named.params["category"], named.params["symbol"]) == ("linear", LTC)
    assert (listed.params["category"], listed.params["settleCoin"], listed.params["limit"]) == ("linear", "USDT", "200")
    assert "cursor" not in listed.params and after.params["cursor"] == cursor


async def test_bybit_flat_position_row_is_none(venue_gateway, recorded: FixtureServer) -> None:
    recorded.answer("GET", BY_POSITIONS, "bybit/position_list_flat")
    answer_last_page(recorded, "bybit/position_list_flat")
    gateway = venue_gateway(BY)
    assert fixture_body("bybit/position_list_flat")["result"]["list"][0]["side"] == ""
    assert await gateway.fetch_position(LTC, Side.LONG) is None
    assert await gateway.fetch_position(LTC, Side.SHORT) is None
    assert await gateway.fetch_positions() == []


async def test_bybit_position_list_that_ignores_the_cursor_is_an_error_not_a_list(
    venue_gateway, recorded: FixtureServer
) -> None:
    """A venue that answers the same page again (its cursor again) never ends: Egis refuses to conclude
    anything from the rows it has read, rather than returning them as the account's positions."""
    recorded.answer("GET", BY_POSITIONS, "bybit/position_list_open")
    gateway = venue_gateway(BY)
    error = await call_error(gateway.fetch_positions())
    assert isinstance(error, IncompleteRead) and "again" in error.message
    assert error.classify().outcome is P
    assert len(recorded.requests("GET", BY_POSITIONS)) == 2


# ---------------------------------------------------------------------------------------------- order look-up


async def test_binance_find_order_filled(venue_gateway, recorded: FixtureServer) -> None:
    recorded.answer("GET", BN_ORDER, "binanceusdm/order_filled")
    gateway = venue_gateway(BN)
    report = await gateway.find_order(BTC, "x-xcKtGhcud2deca88ac9f4ccb9485a9")
    assert report == OrderReport("x-xcKtGhcud2deca88ac9f4ccb9485a9", "262065925771", "filled", D("0.010"), D("47279.4"))
    assert recorded.requests("GET", BN_ORDER)[0].params["origClientOrderId"] == "x-xcKtGhcud2deca88ac9f4ccb9485a9"


async def test_binance_find_order_resting(venue_gateway, recorded: FixtureServer) -> None:
    recorded.answer("GET", BN_ORDER, "binanceusdm/order_new_docs_example")
    gateway = venue_gateway(BN)
    assert await gateway.find_order(BTC, "abc") == OrderReport("abc", "1917641", "open", D(0), None)


async def test_binance_unknown_client_id_is_none(venue_gateway, recorded: FixtureServer) -> None:
    recorded.answer("GET", BN_ORDER, "binanceusdm/err_-2013")
    gateway = venue_gateway(BN)
    assert await gateway.find_order(BTC, "egis-never-sent") is None


async def test_bybit_find_order_in_realtime(venue_gateway, recorded: FixtureServer) -> None:
    recorded.answer("GET", BY_REALTIME, "bybit/order_realtime_open")
    gateway = venue_gateway(BY)
    report = await gateway.find_order(BTC, "egis-o-1")
    assert report == OrderReport("", "3606515b-e4d7-4ea4-b096-bb247d0661ae", "open", D(0), None)
    [asked] = recorded.requests("GET", BY_REALTIME)
    query = asked.params
    assert (query["category"], query["symbol"], query["orderLinkId"]) == ("linear", BTC, "egis-o-1")
    assert recorded.requests("GET", BY_HISTORY) == []


async def test_bybit_find_order_falls_back_to_history(venue_gateway, recorded: FixtureServer) -> None:
    recorded.answer("GET", BY_REALTIME, "bybit/order_list_empty")
    recorded.answer("GET", BY_HISTORY, "bybit/order_history_filled")
    gateway = venue_gateway(BY)
    report = await gateway.find_order(BTC, "egis-o-1")
    assert report == OrderReport("", "aee7453a-a100-465f-857a-3db780e9329a", "filled", D("0.001"), D("123498"))
    assert recorded.requests("GET", BY_HISTORY)[0].params["orderLinkId"] == "egis-o-1"


async def test_bybit_order_in_neither_list_is_none(venue_gateway, recorded: FixtureServer) -> None:
    recorded.answer("GET", BY_REALTIME, "bybit/order_list_empty")
    recorded.answer("GET", BY_HISTORY, "bybit/order_list_empty")
    gateway = venue_gateway(BY)
    assert await gateway.find_order(BTC, "egis-never-sent") is None


async def test_bybit_create_polls_until_history_shows_the_fill(venue_gateway, recorded: FixtureServer) -> None:
    """Bybit acknowledges with ids only and /v5/order/history 'may delay': Egis polls both lists by client id."""
    recorded.answer("POST", BY_CREATE, "bybit/create_order_ack")
    recorded.answer("GET", BY_REALTIME, "bybit/order_list_empty")
    recorded.answer("GET", BY_HISTORY, "bybit/order_list_empty", times=3)
    recorded.answer("GET", BY_HISTORY, "bybit/order_history_filled")
    gateway = venue_gateway(BY)
    report = await gateway.create_order(open_long(cid="egis-o-7"))
    assert (report.status, report.filled_quantity, report.average_price) == ("filled", D("0.001"), D("123498"))
    [sent] = recorded.requests("POST", BY_CREATE)
    assert (sent.params["orderLinkId"], sent.params["orderType"], sent.params["qty"]) == ("egis-o-7", "Market", "0.001")
    assert len(recorded.requests("GET", BY_HISTORY)) == 4


async def test_bybit_create_whose_fill_never_shows_reports_open_unfilled(
    venue_gateway, recorded: FixtureServer
) -> None:
    """After 20 polls (~2 s) with neither list showing the order, Egis reports it open with nothing filled (the
    caller must look again later; Bybit's realtime list also forgets closed orders after a restart)."""
    recorded.answer("POST", BY_CREATE, "bybit/create_order_ack")
    recorded.answer("GET", BY_REALTIME, "bybit/order_list_empty")
    recorded.answer("GET", BY_HISTORY, "bybit/order_list_empty")
    gateway = venue_gateway(BY)
    report = await gateway.create_order(close_long(cid="egis-c-7"))
    assert report == OrderReport("egis-c-7", "1992319485461489920", "open", D(0), None)
    assert len(recorded.requests("GET", BY_REALTIME)) == 20 == len(recorded.requests("GET", BY_HISTORY))
    assert recorded.requests("POST", BY_CREATE)[0].params["reduceOnly"] in ("true", "True")


# ---------------------------------------------------------------------------------------------- order rejections

BYBIT_REJECTIONS = [
    # fixture, request, ccxt class, classification
    ("bybit/err_110017", close_long(), "InvalidOrder", V),
    ("bybit/err_170131", close_long(), "InsufficientFunds", V),
    ("bybit/err_170131", open_long(), "InsufficientFunds", P),
    ("bybit/err_110072", open_long(), "InvalidOrder", V),
    ("bybit/err_110072", close_long(), "InvalidOrder", V),
    ("bybit/err_110094", open_long(), "InvalidOrder", P),
    ("bybit/err_10002", close_long(), "InvalidNonce", T),
    ("bybit/err_10006", open_long(), "RateLimitExceeded", T),
    ("bybit/err_10006", close_long(), "RateLimitExceeded", T),
]


@pytest.mark.parametrize(
    ("fixture", "request_", "error_name", "outcome"),
    BYBIT_REJECTIONS,
    ids=[f"{f.split('/')[1]}-{r.intent.value}" for f, r, _, _ in BYBIT_REJECTIONS],
)
async def test_bybit_order_rejection(
    venue_gateway, recorded: FixtureServer, fixture: str, request_: OrderRequest, error_name: str, outcome: ErrorClass
) -> None:
    recorded.answer("POST", BY_CREATE, fixture)
    gateway = venue_gateway(BY)
    exc = await call_error(gateway.create_order(request_))
    assert exc.code == str(fixture_body(fixture)["retCode"])
    assert error_name in exc.error_names
    assert exc.operation == request_.intent.value
    assert exc.classify().outcome is outcome
    assert recorded.requests("GET", BY_REALTIME) == []  # a rejection is not looked up


BINANCE_REJECTIONS = [
    ("binanceusdm/err_-2022", close_long(), "InvalidOrder", V),
    ("binanceusdm/err_-4116", open_long(), "InvalidOrder", V),
    ("binanceusdm/err_-4116", close_long(), "InvalidOrder", V),
    ("binanceusdm/err_-4164", open_long(), "InvalidOrder", P),
    ("binanceusdm/err_-1021", close_long(), "InvalidNonce", T),
    ("binanceusdm/err_429_-1003", open_long(), "DDoSProtection", T),
    ("binanceusdm/err_429_-1003", close_long(), "DDoSProtection", T),
    ("binanceusdm/err_418_banned", close_long(), "DDoSProtection", T),
]


@pytest.mark.parametrize(
    ("fixture", "request_", "error_name", "outcome"),
    BINANCE_REJECTIONS,
    ids=[f"{f.split('/')[1]}-{r.intent.value}" for f, r, _, _ in BINANCE_REJECTIONS],
)
async def test_binance_order_rejection(
    venue_gateway, recorded: FixtureServer, fixture: str, request_: OrderRequest, error_name: str, outcome: ErrorClass
) -> None:
    recorded.answer("POST", BN_ORDER, fixture)
    gateway = venue_gateway(BN)
    exc = await call_error(gateway.create_order(request_))
    assert exc.code == str(fixture_body(fixture)["code"])
    assert error_name in exc.error_names
    assert exc.classify().outcome is outcome
    [sent] = recorded.requests("POST", BN_ORDER)
    assert sent.params["newClientOrderId"] == request_.client_order_id
    assert sent.params.get("reduceOnly") == ("true" if request_.reduce_only else None)


async def test_binance_ban_message_reaches_the_error(venue_gateway, recorded: FixtureServer) -> None:
    """The ban's end ('IP banned until ...') survives in the error an operator sees."""
    recorded.answer("GET", BN_POSITIONS, "binanceusdm/err_418_banned")
    gateway = venue_gateway(BN)
    exc = await call_error(gateway.fetch_position(BTC, Side.LONG))
    assert "IP banned until 1660090423228" in exc.message
    assert exc.classify().outcome is T


# ---------------------------------------------------------------------------------------------- read errors

READ_ERRORS = [
    (BN, "GET", BN_POSITIONS, "binanceusdm/err_-1021", "InvalidNonce"),
    (BN, "GET", BN_POSITIONS, "binanceusdm/err_429_-1003", "DDoSProtection"),
    (BN, "GET", BN_POSITIONS, "binanceusdm/err_418_banned", "DDoSProtection"),
    (BY, "GET", BY_POSITIONS, "bybit/err_10002", "InvalidNonce"),
    (BY, "GET", BY_POSITIONS, "bybit/err_10006", "RateLimitExceeded"),
]


@pytest.mark.parametrize(
    ("exchange", "method", "path", "fixture", "error_name"), READ_ERRORS, ids=[e[3] for e in READ_ERRORS]
)
async def test_read_error_is_transient(
    venue_gateway, recorded: FixtureServer, exchange, method: str, path: str, fixture: str, error_name: str
) -> None:
    recorded.answer(method, path, fixture)
    gateway = venue_gateway(exchange)
    symbol = BTC if exchange is BN else LTC
    exc = await call_error(gateway.fetch_position(symbol, Side.LONG))
    assert error_name in exc.error_names
    assert exc.operation == "read"
    assert exc.classify().outcome is T


async def test_bybit_ip_limit_403_on_a_read_is_transient(venue_gateway, recorded: FixtureServer) -> None:
    recorded.answer("GET", BY_POSITIONS, "bybit/err_403_ip_limit")
    gateway = venue_gateway(BY)
    exc = await call_error(gateway.fetch_position(LTC, Side.LONG))
    assert "RateLimitExceeded" in exc.error_names  # ccxt's bybit maps HTTP 403 to RateLimitExceeded
    assert exc.classify().outcome is T


@pytest.mark.parametrize("request_", [open_long(), close_long()], ids=["open", "close"])
async def test_bybit_ip_limit_403_on_an_order_is_transient(
    venue_gateway, recorded: FixtureServer, request_: OrderRequest
) -> None:
    """A 403 'access too frequent' is Bybit's IP ban (10+ minutes): the order was refused at the gate."""
    recorded.answer("POST", BY_CREATE, "bybit/err_403_ip_limit")
    gateway = venue_gateway(BY)
    exc = await call_error(gateway.create_order(request_))
    assert exc.classify().outcome is T


# ---------------------------------------------------------------------------------------------- trade history

ETH_SELL_MS = 1645930322371  # the recorded ETHUSDT SELL fill
LTC_BUY_MS = 1710762918390  # the recorded LTCUSDT Buy execution


def trade_history(recorded: FixtureServer, exchange: Exchange) -> None:
    if exchange is BN:
        recorded.answer("GET", BN_TRADES, "binanceusdm/user_trades_ethusdt", window="binance_user_trades")
        recorded.answer("GET", "/fapi/v1/forceOrders", "binanceusdm/force_orders_empty")
    else:
        recorded.answer("GET", BY_EXECUTIONS, "bybit/execution_list", window="bybit_execution_list")


def at_the_time_of(gateway, ms: int) -> None:  # type: ignore[no-untyped-def]
    """The recorded trades are years old: look at them from just after they happened."""
    gateway.clock = lambda: at_ms(ms) + timedelta(hours=1)


async def test_binance_closing_trades_of_a_long(venue_gateway, recorded: FixtureServer) -> None:
    trade_history(recorded, BN)
    gateway = venue_gateway(BN)
    at_the_time_of(gateway, ETH_SELL_MS)
    since = at_ms(ETH_SELL_MS) - timedelta(days=1)
    trades = await gateway.fetch_closing_trades(ETH, Side.LONG, since)
    sell = Trade("82357626", "831238666", OrderSide.SELL, D("2778.35"), D("0.005"), D(0), at_ms(ETH_SELL_MS))
    assert trades == [sell]
    [asked] = recorded.requests("GET", BN_TRADES)
    start, end = int(asked.params["startTime"]), int(asked.params["endTime"])
    assert start == int(since.timestamp() * 1000) and 0 < end - start <= 7 * 86_400_000  # within the venue's limit


async def test_binance_closing_trades_of_a_short(venue_gateway, recorded: FixtureServer) -> None:
    trade_history(recorded, BN)
    gateway = venue_gateway(BN)
    at_the_time_of(gateway, ETH_SELL_MS)
    trades = await gateway.fetch_closing_trades(ETH, Side.SHORT, at_ms(ETH_SELL_MS) - timedelta(days=1))
    assert [(t.side, t.price, t.quantity, t.realized_pnl) for t in trades] == [
        (OrderSide.BUY, D("2779"), D("0.005"), D("-0.00325000"))
    ]


async def test_binance_trades_before_since_are_not_closing(venue_gateway, recorded: FixtureServer) -> None:
    recorded.answer("GET", BN_TRADES, "binanceusdm/user_trades_btcusdt", window="binance_user_trades")
    recorded.answer("GET", "/fapi/v1/forceOrders", "binanceusdm/force_orders_empty")
    gateway = venue_gateway(BN)
    buy_ms = 1699972836419
    at_the_time_of(gateway, buy_ms)
    assert await gateway.fetch_closing_trades(BTC, Side.SHORT, at_ms(buy_ms + 1)) == []
    [trade] = await gateway.fetch_closing_trades(BTC, Side.SHORT, at_ms(buy_ms - 60_000))
    assert (trade.trade_id, trade.price, trade.quantity) == ("272536245", D("36567.10"), D("0.010"))


async def test_binance_closing_trade_older_position_is_found(venue_gateway, recorded: FixtureServer) -> None:
    """Opened 10 days before its close: asking "since opened_at" alone (ccxt sends endTime = since + 7 d)
    finds nothing; Egis reads the venue's 7-day windows back from now."""
    trade_history(recorded, BN)
    gateway = venue_gateway(BN)
    at_the_time_of(gateway, ETH_SELL_MS)
    trades = await gateway.fetch_closing_trades(ETH, Side.LONG, at_ms(ETH_SELL_MS) - timedelta(days=10))
    assert [t.trade_id for t in trades] == ["82357626"]


async def test_bybit_closing_trades_of_a_short(venue_gateway, recorded: FixtureServer) -> None:
    trade_history(recorded, BY)
    gateway = venue_gateway(BY)
    at_the_time_of(gateway, LTC_BUY_MS)
    since = at_ms(LTC_BUY_MS) - timedelta(days=1)
    trades = await gateway.fetch_closing_trades(LTC, Side.SHORT, since)
    assert trades == [
        Trade(
            "751c8dba-bdeb-5d0c-9dd3-dda6bf98cdaf",
            "c18b72e4-1bf7-4c30-9b99-ba3274066029",
            OrderSide.BUY,
            D("85.11"),
            D("0.1"),
            None,
            at_ms(LTC_BUY_MS),
        )
    ]
    assert await gateway.fetch_closing_trades(LTC, Side.LONG, since) == []
    asked = recorded.requests("GET", BY_EXECUTIONS)[0].params
    assert (asked["category"], asked["symbol"]) == ("linear", LTC)
    assert "execType" not in asked  # ccxt would send execType=Trade: liquidations (BustTrade) would vanish
    assert int(asked["startTime"]) == int(since.timestamp() * 1000)
    assert 0 < int(asked["endTime"]) - int(asked["startTime"]) <= 7 * 86_400_000


async def test_bybit_closing_trade_older_position_is_found(venue_gateway, recorded: FixtureServer) -> None:
    trade_history(recorded, BY)
    gateway = venue_gateway(BY)
    at_the_time_of(gateway, LTC_BUY_MS)
    trades = await gateway.fetch_closing_trades(LTC, Side.SHORT, at_ms(LTC_BUY_MS) - timedelta(days=10))
    assert [t.trade_id for t in trades] == ["751c8dba-bdeb-5d0c-9dd3-dda6bf98cdaf"]
