"""Binance USD-M futures and Bybit v5 linear perpetuals through the real ccxt client.

ccxt signs requests, maps errors to its exception classes and knows the endpoints; we read
every number from the exchange's own strings (`info`), never from ccxt's floats. The same
code talks to the exchanges, their testnets (ccxt sandbox mode), or a local simulator
(`base_url`, via `egis.exchanges.local.point_to_local`).

Every close order is reduce-only and every order carries our client order id, so a retried
submission is looked up instead of re-sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import ccxt.async_support as ccxt_async
from ccxt.base.errors import BaseError, OrderNotFound

from egis import metrics
from egis.errors import UnknownSymbol
from egis.exchanges.accounts import AccountConfig
from egis.exchanges.backoff import Backoff, ip_wide, retry_after, until_text
from egis.exchanges.base import (
    Balance,
    ExchangeCallError,
    ExchangePosition,
    IncompleteRead,
    OrderReport,
    OrderRequest,
    RecordFill,
    Trade,
)
from egis.exchanges.local import point_to_local
from egis.models import Exchange, Intent, OrderSide, Side
from egis.rules.classify import Operation
from egis.rules.sizing import MarketRules, validate_quantity

R = TypeVar("R")

_BINANCE_STATUS = {
    "FILLED": "filled",
    "PARTIALLY_FILLED": "partially_filled",
    "NEW": "open",
    "CANCELED": "canceled",
    "EXPIRED": "canceled",
    "REJECTED": "rejected",
}
_BYBIT_STATUS = {
    "Filled": "filled",
    "PartiallyFilled": "partially_filled",
    "New": "open",
    "Created": "open",
    "Untriggered": "open",
    "Cancelled": "canceled",
    "PartiallyFilledCanceled": "partially_filled",
    "Deactivated": "canceled",
    "Rejected": "rejected",
}


HISTORY_WINDOW = timedelta(days=7) - timedelta(seconds=1)
"""The widest trade-history window both venues answer (7 days between startTime and endTime)."""
HISTORY_HORIZON = timedelta(days=180)
"""How far back a ghost's exit is looked for (Binance keeps account trades for 6 months)."""
_BYBIT_EXEC_KINDS = {"Trade": "trade", "BustTrade": "liquidation", "AdlTrade": "adl"}
MAX_PAGES = 20
"""Pages of one trade-history window read at most (a bound on a misbehaving cursor)."""
POSITION_PAGE_SIZE = 200
"""Rows per page of Bybit's position list: "limit: Limit for data size per page. [1, 200]. Default: 20"
(docs/v5/position/position.mdx)."""
MAX_POSITION_PAGES = 100
"""Pages of Bybit's open-position list read at most (20,000 positions, far beyond the venue's few hundred
linear symbols x 2 hedge-mode sides); more raises IncompleteRead, never a shorter list."""
MODE_RECHECK_SECONDS = 300.0
"""How long a position-mode answer is trusted (an operator may switch the account meanwhile)."""

_RESPONSES: contextvars.ContextVar[list[tuple[int, Any]] | None] = contextvars.ContextVar(
    "egis_responses", default=None
)
"""The (status, headers) of the responses of the ccxt call running in this task."""


def _close_quietly(awaitable: Awaitable[Any]) -> None:
    """A call refused before it started: close its coroutine so Python does not warn about it."""
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()


@functools.cache
def _ssl_context(cafile: str) -> ssl.SSLContext:
    """One TLS context per process: ccxt would build one per instance (per account), loading the
    whole CA bundle each time (~15-25 ms of CPU, again whenever an account file changes)."""
    return ssl.create_default_context(cafile=cafile)


def new_client(module: Any, exchange: Exchange, config: AccountConfig) -> Any:
    """The account's ccxt client (`module`: ccxt.async_support for REST, ccxt.pro for the private
    streams), built the same way for both: credentials, rate limiting against the real venue,
    linear markets only on Bybit, pointed at a local simulator or the testnet, and the responses'
    HTTP status and headers kept for the call that made them (see `throttle_of`)."""
    params: dict[str, Any] = {
        "apiKey": config.api_key.get_secret_value() if config.api_key else None,
        "secret": config.secret.get_secret_value() if config.secret else None,
        "enableRateLimit": config.base_url is None,
        "timeout": config.timeout_ms,
    }
    client = (module.binanceusdm if exchange is Exchange.BINANCEUSDM else module.bybit)(params)
    if client.verify:
        client.ssl_context = _ssl_context(client.cafile)
    if exchange is Exchange.BYBIT:
        client.options["fetchMarkets"] = {**client.options.get("fetchMarkets", {}), "types": ["linear"]}
    if config.base_url:
        point_to_local(client, config.base_url)
    elif config.sandbox:
        client.set_sandbox_mode(True)
    original = client.on_rest_response

    def on_rest_response(code, reason, url, method, headers, body, request_headers, request_body):  # type: ignore[no-untyped-def]
        # ccxt hands every response to `on_rest_response` in the caller's task
        seen = _RESPONSES.get()
        if seen is not None:
            seen.append((code, headers))
        return original(code, reason, url, method, headers, body, request_headers, request_body)

    client.on_rest_response = on_rest_response
    return client


@contextlib.contextmanager
def responses_seen() -> Iterator[list[tuple[int, Any]]]:
    """Collect the (HTTP status, headers) of the responses to the ccxt calls made inside (and in
    the tasks they start)."""
    seen: list[tuple[int, Any]] = []
    token = _RESPONSES.set(seen)
    try:
        yield seen
    finally:
        _RESPONSES.reset(token)


@dataclass(frozen=True)
class Throttle:
    seconds: float  # how long no request may go out
    ip_wide: bool  # the IP's limit (every account of the venue), not the account's


_BANNED_UNTIL = re.compile(r"banned until (\d{13})")


def throttle_of(
    exchange: Exchange, exc: BaseException, status: int | None, headers: Any, now_ms: float | None = None
) -> Throttle | None:
    """The back-off a throttling answer asks for, or None: how long, from the venue's headers
    (`retry_after`) or Binance's "IP banned until <ms>" (its 418, Binance USD-M docs, General Info
    > LIMITS); and whether it holds the IP (`ip_wide`)."""
    from ccxt.base.errors import DDoSProtection, RateLimitExceeded

    if not isinstance(exc, DDoSProtection | RateLimitExceeded):
        return None
    now_ms = time.time() * 1000 if now_ms is None else now_ms
    seconds = retry_after(status, headers, now_ms)
    match = _BANNED_UNTIL.search(str(exc))
    if match:
        seconds = max(1.0, (int(match.group(1)) - now_ms) / 1000)
    return Throttle(seconds, ip_wide(exchange.value, status, _error_code(exc)))


def _dec(value: Any) -> Decimal | None:
    if value in (None, ""):
        return None
    return Decimal(str(value))


def _error_code(exc: BaseError) -> str | None:
    """The exchange's own error code, from the JSON body ccxt put in the message."""
    text = str(exc)
    start = text.find("{")
    if start < 0:
        return None
    try:
        body = json.loads(text[start:])
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    code = body.get("code", body.get("retCode"))
    return None if code is None else str(code)


def _binance_forced_kind(client_order_id: str) -> str:
    """User's Force Orders: liquidations carry "autoclose-<n>", auto-deleveraging "adl_autoclose"."""
    return "adl" if client_order_id.startswith("adl_") else "liquidation"


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _from_ms(ms: Any) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


class CcxtGateway:
    records_fills_atomically = False

    def __init__(self, exchange: Exchange, account: str, config: AccountConfig, backoff: Backoff | None = None) -> None:
        if exchange not in (Exchange.BINANCEUSDM, Exchange.BYBIT):
            raise ValueError(f"CcxtGateway serves binanceusdm and bybit, not {exchange}")
        self.exchange = exchange
        self.account = account
        self._ex = new_client(ccxt_async, exchange, config)
        self._markets: dict[str, MarketRules] | None = None
        self._symbols: dict[str, str] = {}  # BTCUSDT -> BTC/USDT:USDT
        self._load_lock = asyncio.Lock()
        self.backoff = backoff or Backoff(exchange.value, account)
        self.hedge_mode: bool | None = None  # learnt when the gateway starts (load_markets)
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # "now" for trade-history windows
        self._mode_checked = 0.0

    @property
    def _binance(self) -> bool:
        return self.exchange is Exchange.BINANCEUSDM

    async def check_backoff(self) -> None:
        """Refuse, without sending anything, while the account is backing off (a ban, a Retry-After)."""
        left = await self.backoff.remaining()
        if left > 0:
            raise ExchangeCallError(
                self.exchange,
                "read",
                ["RateLimitExceeded", "NetworkError", "ExchangeError", "BaseError"],
                "backoff",
                f"backing off for another {left:.0f}s (until {until_text(left)}): nothing sent",
                retry_after=left,
            )

    async def _call(
        self, operation: Operation, awaitable: Awaitable[R], seen: list[tuple[int, Any]] | None = None
    ) -> R:
        """One request (or a ccxt call that makes a few). Refused locally during a back-off; a
        throttling answer starts the account's shared back-off; a timestamp refusal re-learns the
        venue's clock (a read is then retried once: it changed nothing). `seen` collects the
        (HTTP status, headers) of each answer."""
        try:
            await self.check_backoff()
        except ExchangeCallError as refused:
            refused.operation = operation
            _close_quietly(awaitable)
            raise
        seen = [] if seen is None else seen
        token = _RESPONSES.set(seen)
        try:
            return await awaitable
        except BaseError as exc:
            names = [c.__name__ for c in type(exc).__mro__ if issubclass(c, BaseError)]
            status, headers = seen[-1] if seen else (None, None)
            error = ExchangeCallError(self.exchange, operation, names, _error_code(exc), str(exc))
            throttle = throttle_of(self.exchange, exc, status, headers)
            if throttle is not None:
                error.retry_after = throttle.seconds
                await self.backoff.impose(
                    throttle.seconds, f"{status} {error.code}: {error.message[:200]}", ip=throttle.ip_wide
                )
            if "InvalidNonce" in names:  # -1021 / 10002: our clock is off the venue's
                await self.learn_clock()
            raise error from None
        finally:
            _RESPONSES.reset(token)

    # ------------------------------------------------------------ raw access (egis selftest)
    @property
    def ccxt(self) -> Any:
        """The ccxt instance, for the selftest's requests that Egis itself never makes (a reused
        client id, an oversized reduce-only order); send them through `call`."""
        return self._ex

    async def call(
        self, operation: Operation, awaitable: Awaitable[R], responses: list[tuple[int, Any]] | None = None
    ) -> R:
        """A raw ccxt call with the gateway's back-off and clock handling; `responses` collects the
        (HTTP status, headers) of its answers."""
        return await self._call(operation, awaitable, responses)

    async def ccxt_symbol(self, symbol: str) -> str:
        """BTCUSDT -> BTC/USDT:USDT (the markets are loaded first)."""
        return await self._ccxt_symbol(symbol)

    def parse_position(self, info: dict[str, Any]) -> ExchangePosition | None:
        """What the gateway makes of one raw position row (None: flat)."""
        return self._parse_position(info)

    async def learn_clock(self) -> int:
        """Measure the venue's clock; ccxt signs with `now - timeDifference` from then on."""
        try:
            difference = int(await self._ex.load_time_difference())
        except BaseError:
            return int(self._ex.options.get("timeDifference", 0))
        metrics.EXCHANGE_CLOCK_SKEW_MS.labels(self.exchange.value, self.account).set(difference)
        return difference

    # ------------------------------------------------------------ markets
    async def load_markets(self) -> dict[str, MarketRules]:
        if self._markets is None:
            async with self._load_lock:
                if self._markets is None:
                    await self.learn_clock()  # before anything is signed: a skewed clock refuses every call
                    markets = await self._call("read", self._ex.load_markets())
                    rules: dict[str, MarketRules] = {}
                    for m in markets.values():
                        tradable = m.get("active") is not False  # pre-market / delisted contracts are not
                        if tradable and m.get("swap") and m.get("linear") and m.get("settle") in ("USDT", "USDC"):
                            rules[m["id"]] = self._rules(m)
                            self._symbols[m["id"]] = m["symbol"]
                    self._markets = rules
        return self._markets

    def _rules(self, market: dict[str, Any]) -> MarketRules:
        info = market["info"]
        if self._binance:
            filters = {f["filterType"]: f for f in info.get("filters", [])}
            lot = filters.get("MARKET_LOT_SIZE") or filters.get("LOT_SIZE", {})
            step = _dec(filters.get("LOT_SIZE", {}).get("stepSize")) or _dec(lot.get("stepSize"))
            return MarketRules(
                symbol=market["id"],
                amount_step=step or Decimal("1"),
                min_quantity=_dec(lot.get("minQty")) or step or Decimal("1"),
                max_quantity=_dec(lot.get("maxQty")),
                min_notional=_dec(filters.get("MIN_NOTIONAL", {}).get("notional")) or Decimal(0),
                price_tick=_dec(filters.get("PRICE_FILTER", {}).get("tickSize")),
            )
        lot = info.get("lotSizeFilter", {})
        step = _dec(lot.get("qtyStep")) or Decimal("1")
        return MarketRules(
            symbol=market["id"],
            amount_step=step,
            min_quantity=_dec(lot.get("minOrderQty")) or step,
            max_quantity=_dec(lot.get("maxMktOrderQty")) or _dec(lot.get("maxOrderQty")),
            min_notional=_dec(lot.get("minNotionalValue")) or Decimal(0),
            price_tick=_dec(info.get("priceFilter", {}).get("tickSize")),
        )

    async def market(self, symbol: str) -> MarketRules:
        markets = await self.load_markets()
        if symbol not in markets:
            raise UnknownSymbol(f"{self.exchange} does not list a linear perpetual {symbol!r}")
        return markets[symbol]

    async def _ccxt_symbol(self, symbol: str) -> str:
        await self.market(symbol)
        return self._symbols[symbol]

    # ------------------------------------------------------------ positions
    def _parse_position(self, info: dict[str, Any]) -> ExchangePosition | None:
        """One position row. Hedge-mode rows are read too (Binance `positionSide` LONG/SHORT, Bybit
        `positionIdx` 1/2): Egis does not open on a hedge-mode account, but a position it holds
        must never read as gone because the account was switched."""
        if self._binance:
            amount = _dec(info.get("positionAmt")) or Decimal(0)
            if amount == 0:
                return None
            hedge_side = {"LONG": Side.LONG, "SHORT": Side.SHORT}.get(str(info.get("positionSide", "BOTH")).upper())
            side = hedge_side or (Side.LONG if amount > 0 else Side.SHORT)
            return ExchangePosition(
                info["symbol"], side, abs(amount), _dec(info.get("entryPrice")), _dec(info.get("markPrice"))
            )
        size = _dec(info.get("size")) or Decimal(0)
        if size == 0 or info.get("side") not in ("Buy", "Sell"):
            return None
        side = Side.LONG if info["side"] == "Buy" else Side.SHORT
        entry = _dec(info.get("avgPrice")) or _dec(info.get("entryPrice"))
        return ExchangePosition(info["symbol"], side, size, entry, _dec(info.get("markPrice")))

    async def position_mode(self, symbol: str = "BTCUSDT") -> str:
        """'hedge' or 'one_way', as the venue says (re-checked every few minutes). Binance: GET
        /fapi/v1/positionSide/dual ("dualSidePosition": true = hedge mode; USD-M docs "Get Current
        Position Mode"). Bybit has no query for it: a symbol's position rows carry positionIdx 1/2
        in hedge mode, 0 in one-way mode (docs/v5/position.mdx, enum.mdx)."""
        if self.hedge_mode is None or time.monotonic() - self._mode_checked > MODE_RECHECK_SECONDS:
            if self._binance:
                answer = await self._call("read", self._ex.fapiPrivateGetPositionSideDual())
                hedge = str(answer.get("dualSidePosition")).lower() == "true"
            else:
                await self.market(symbol)
                answer = await self._call(
                    "read", self._ex.privateGetV5PositionList({"category": "linear", "symbol": symbol})
                )
                rows = answer.get("result", {}).get("list", [])
                hedge = any(str(r.get("positionIdx")) in ("1", "2") for r in rows)
            self.hedge_mode, self._mode_checked = hedge, time.monotonic()
        return "hedge" if self.hedge_mode else "one_way"

    async def fetch_positions(self) -> list[ExchangePosition]:
        """Every open position of the account, or an ExchangeCallError: never part of them (the exchange sync
        would take a missing position for one closed on the exchange). Binance answers all of them at once
        (GET /fapi/v3/positionRisk has no paging); Bybit in pages, see _bybit_open_position_rows."""
        await self.load_markets()
        if self._binance:
            infos = await self._binance_position_rows(None)
        else:
            infos = await self._bybit_open_position_rows()
        parsed = (self._parse_position(info) for info in infos)
        return [p for p in parsed if p is not None]

    async def _bybit_open_position_rows(self) -> list[dict[str, Any]]:
        """The raw rows of every open USDT linear position, page by page. ccxt's fetch_positions reads one
        page of 200 (it pages only with paginate=True, and then stops quietly after 10 calls), so the pages
        are read here: GET /v5/position/list with settleCoin ("returns position size greater than zero"),
        limit 200 and the ``nextPageCursor`` of the previous page as ``cursor`` (docs/v5/position/position.mdx).

        The list ends on an empty cursor, or on a page without rows (a recorded real answer carries a cursor
        on its last page: tests/conformance/fixtures/bybit/position_list_open.json). A cursor handed out twice
        or more than MAX_POSITION_PAGES pages raise IncompleteRead. A row seen twice (it moved between two
        requests) counts once: the venue keeps one row per symbol and positionIdx."""
        query: dict[str, Any] = {"category": "linear", "settleCoin": "USDT", "limit": POSITION_PAGE_SIZE}
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        cursors: set[str] = set()
        for _ in range(MAX_POSITION_PAGES):
            answer = await self._call("read", self._ex.privateGetV5PositionList(dict(query)))
            result = answer.get("result") or {}
            page = result.get("list") or []
            for info in page:
                rows[str(info.get("symbol")), str(info.get("positionIdx"))] = info
            cursor = str(result.get("nextPageCursor") or "")
            if not cursor or not page:
                return list(rows.values())
            if cursor in cursors:
                raise IncompleteRead(
                    self.exchange,
                    f"bybit position list: the venue handed out cursor {cursor!r} again after {len(rows)} "
                    "positions; the list was not finished and nothing is concluded from part of it",
                )
            cursors.add(cursor)
            query["cursor"] = cursor
        raise IncompleteRead(
            self.exchange,
            f"bybit position list: more than {MAX_POSITION_PAGES} pages of {POSITION_PAGE_SIZE} "
            f"({len(rows)} positions read); the list was not finished and nothing is concluded from part of it",
        )

    async def fetch_symbol_positions(self, symbol: str) -> list[ExchangePosition]:
        """The account's open positions in one symbol (one request, for that symbol only)."""
        ccxt_symbol = await self._ccxt_symbol(symbol)
        if self._binance:
            infos = await self._binance_position_rows(symbol)
        else:  # ccxt sends the symbol: one row (two in hedge mode)
            infos = [row["info"] for row in await self._call("read", self._ex.fetch_positions([ccxt_symbol]))]
        parsed = (self._parse_position(info) for info in infos)
        return [p for p in parsed if p is not None and p.symbol == symbol]

    async def _binance_position_rows(self, symbol: str | None) -> list[dict[str, Any]]:
        """The raw rows of GET /fapi/v3/positionRisk, for one symbol or all (weight 5 either way; USD-M
        docs "Position Information V3"). Not ccxt's fetch_positions: it requests EVERY position of the
        account even when asked for one symbol, and parses each with decimal-string arithmetic (and
        loads the leverage brackets first). The check before each open then cost CPU in proportion to
        the account's positions: at 2,000 positions on one account, opens fell to 15 a minute."""
        answer = await self._call("read", self._ex.fapiPrivateV3GetPositionRisk({"symbol": symbol} if symbol else {}))
        if not isinstance(answer, list) or not all(isinstance(row, dict) for row in answer):
            raise IncompleteRead(
                self.exchange, f"binance positionRisk answered {type(answer).__name__}, not a list of positions"
            )
        return answer

    async def fetch_position(self, symbol: str, side: Side) -> ExchangePosition | None:
        return next((p for p in await self.fetch_symbol_positions(symbol) if p.side is side), None)

    # ------------------------------------------------------------ orders
    async def create_order(self, request: OrderRequest, *, record: RecordFill | None = None) -> OrderReport:
        """Validate locally (nothing is sent for a bad symbol or quantity), then send. The report
        may say nothing filled yet (Binance NEW / 0; a Bybit order not visible after polling): the
        caller looks it up again (egis.rules.submission), it never records that as final."""
        rules = await self.market(request.symbol)
        validate_quantity(request.quantity, rules, reduce_only=request.reduce_only)
        if request.intent is Intent.CLOSE and not request.reduce_only:
            raise ValueError("every close order is reduce-only")
        ccxt_symbol = self._symbols[request.symbol]
        params: dict[str, Any] = {"clientOrderId": request.client_order_id}
        if request.reduce_only:
            params["reduceOnly"] = True
        if not self._binance and request.reduce_only and request.quantity < rules.min_quantity:
            order = await self._bybit_close_remainder(request)
        else:
            order = await self._call(
                request.intent.value,
                self._ex.create_order(
                    ccxt_symbol, "market", request.side.value, format(request.quantity, "f"), None, params
                ),
            )
        if self._binance:
            return self._binance_report(order["info"])
        # Bybit acknowledges with ids only; the fill is read back by client id.
        for _ in range(20):
            report = await self.find_order(request.symbol, request.client_order_id)
            if report is not None and report.status != "open":
                return report
            await asyncio.sleep(0.1)
        return report or OrderReport(request.client_order_id, order.get("id"), "open", Decimal(0), None)

    async def _bybit_close_remainder(self, request: OrderRequest) -> dict[str, Any]:
        """A remainder below minOrderQty (left by a partial stop): Bybit exempts closing orders from
        the minimum notional but not from the minimum size (help center, "Derivatives Trading
        Rules"); its documented way out is qty "0" with reduceOnly and closeOnTrigger, which closes
        the whole position (docs/v5/order/create-order.mdx). In one-way mode the position is ours."""
        answer = await self._call(
            request.intent.value,
            self._ex.privatePostV5OrderCreate(
                {
                    "category": "linear",
                    "symbol": request.symbol,
                    "side": "Buy" if request.side is OrderSide.BUY else "Sell",
                    "orderType": "Market",
                    "qty": "0",
                    "reduceOnly": True,
                    "closeOnTrigger": True,
                    "orderLinkId": request.client_order_id,
                }
            ),
        )
        return {"id": answer.get("result", {}).get("orderId"), "info": answer.get("result", {})}

    def _binance_report(self, info: dict[str, Any]) -> OrderReport:
        filled = _dec(info.get("executedQty")) or Decimal(0)
        average = _dec(info.get("avgPrice"))
        return OrderReport(
            client_order_id=info.get("clientOrderId", ""),
            exchange_order_id=str(info["orderId"]) if info.get("orderId") is not None else None,
            status=_BINANCE_STATUS.get(info.get("status", ""), "open"),
            filled_quantity=filled,
            average_price=average if filled > 0 and average else None,
        )

    def _bybit_report(self, info: dict[str, Any]) -> OrderReport:
        filled = _dec(info.get("cumExecQty")) or Decimal(0)
        average = _dec(info.get("avgPrice"))
        return OrderReport(
            client_order_id=info.get("orderLinkId", ""),
            exchange_order_id=info.get("orderId"),
            status=_BYBIT_STATUS.get(info.get("orderStatus", ""), "open"),
            filled_quantity=filled,
            average_price=average if filled > 0 and average else None,
        )

    async def find_order(self, symbol: str, client_order_id: str) -> OrderReport | None:
        ccxt_symbol = await self._ccxt_symbol(symbol)
        if self._binance:
            try:
                order = await self._call(
                    "read", self._ex.fetch_order(None, ccxt_symbol, {"origClientOrderId": client_order_id})
                )
            except ExchangeCallError as exc:
                if OrderNotFound.__name__ in exc.error_names:
                    return None
                raise
            return self._binance_report(order["info"])
        query = {"category": "linear", "symbol": symbol, "orderLinkId": client_order_id}
        for endpoint in (self._ex.privateGetV5OrderRealtime, self._ex.privateGetV5OrderHistory):
            response = await self._call("read", endpoint(query))
            rows = response.get("result", {}).get("list", [])
            if rows:
                return self._bybit_report(rows[0])
        return None

    # ------------------------------------------------------------ prices, trades, balance
    async def fetch_tickers(self, symbols: Sequence[str]) -> dict[str, Decimal]:
        """Last prices for many symbols in ONE request (the symbol's alone when one is asked).
        Not ccxt's fetch_tickers on either venue: it reads and parses the ticker of EVERY symbol
        even when asked for one. Binance: the "Symbol Price Ticker" (`GET /fapi/v1/ticker/price`:
        weight 1 for one symbol, 2 for all), not the 24 h statistics of every symbol (`ticker/24hr`
        without a symbol: weight 40; USD-M docs, Market Data endpoints), a weight the IP shares with
        every account (a price-watch tick every 5 s on three accounts spent 1,440 of the 2,400 a
        minute on it). Bybit: `GET /v5/market/tickers?category=linear[&symbol=]` (docs/v5/market/
        tickers.mdx), `lastPrice`; ccxt's parsing of every linear ticker took 40 % of the worker's
        CPU at 2,000 listed symbols (each open reads its symbol's price)."""
        for symbol in symbols:
            await self._ccxt_symbol(symbol)  # an unknown symbol is refused before anything is sent
        one = {"symbol": symbols[0]} if len(symbols) == 1 else {}
        if self._binance:
            answer = await self._call("read", self._ex.fapiPublicGetTickerPrice(one))
            rows, field = ([answer] if one else answer), "price"
        else:
            answer = await self._call("read", self._ex.publicGetV5MarketTickers({"category": "linear"} | one))
            rows, field = ((answer.get("result") or {}).get("list") if isinstance(answer, dict) else None), "lastPrice"
        wanted = set(symbols)  # a set: the answer lists every symbol (2,000 rows x 2,000 asked was quadratic)
        prices = {
            str(row["symbol"]): _dec(row.get(field))
            for row in (rows if isinstance(rows, list) else [])
            if isinstance(row, dict) and row.get("symbol") in wanted
        }
        return {s: price for s in symbols if (price := prices.get(s)) is not None}

    async def fetch_closing_trades(
        self, symbol: str, side: Side, since: datetime, quantity: Decimal | None = None
    ) -> list[Trade]:
        """Closing-side trades of a `side` position since `since`, newest first, to learn a ghost's
        exit. Both venues answer trade history in windows of at most 7 days (Binance USD-M
        "Account Trade List": "The time between startTime and endTime cannot be longer than 7
        days"; Bybit docs/v5/order/execution.mdx: "endTime - startTime <= 7 days"), so the
        history is read window by window from now back to `since` (at most HISTORY_HORIZON), and
        stops once `quantity` is covered. Liquidations and auto-deleveraging are included and
        marked: Bybit execType BustTrade / AdlTrade (docs/v5/enum.mdx; ccxt's fetch_my_trades
        would send execType=Trade and drop them), Binance orders listed by User's Force Orders
        (clientOrderId "autoclose-..." / "adl_autoclose")."""
        await self.market(symbol)
        closing = OrderSide.SELL if side is Side.LONG else OrderSide.BUY
        now = self.clock() + timedelta(minutes=1)
        oldest = max(since, now - HISTORY_HORIZON)
        trades: list[Trade] = []
        end = now
        while end > oldest:
            start = max(oldest, end - HISTORY_WINDOW)
            window = self._binance_trades if self._binance else self._bybit_trades
            found = [t for t in await window(symbol, start, end) if t.side is closing and t.at >= since]
            trades.extend(sorted(found, key=lambda t: t.at, reverse=True))
            if quantity is not None and sum((t.quantity for t in trades), Decimal(0)) >= quantity:
                break
            end = start - timedelta(milliseconds=1)
        return trades

    async def _binance_trades(self, symbol: str, start: datetime, end: datetime) -> list[Trade]:
        rows: list[dict[str, Any]] = []
        cursor = _ms(start)
        for _ in range(MAX_PAGES):  # oldest first, at most 1000 per page: page on from the last one seen
            page = await self._call(
                "read",
                self._ex.fapiPrivateGetUserTrades(
                    {"symbol": symbol, "startTime": cursor, "endTime": _ms(end), "limit": 1000}
                ),
            )
            rows.extend(page)
            if len(page) < 1000:
                break
            cursor = int(page[-1]["time"]) + 1
        if not rows:
            return []
        forced = await self._call(
            "read",
            self._ex.fapiPrivateGetForceOrders(
                {"symbol": symbol, "startTime": _ms(start), "endTime": _ms(end), "limit": 100}
            ),
        )
        kinds = {str(o["orderId"]): _binance_forced_kind(str(o.get("clientOrderId", ""))) for o in forced}
        return [
            Trade(
                trade_id=str(info["id"]),
                order_id=str(info.get("orderId")),
                side=OrderSide(info["side"].lower()),
                price=Decimal(info["price"]),
                quantity=Decimal(info["qty"]),
                realized_pnl=_dec(info.get("realizedPnl")),
                at=_from_ms(info["time"]),
                kind=kinds.get(str(info.get("orderId")), "trade"),
            )
            for info in rows
        ]

    async def _bybit_trades(self, symbol: str, start: datetime, end: datetime) -> list[Trade]:
        trades: list[Trade] = []
        query: dict[str, Any] = {
            "category": "linear",
            "symbol": symbol,
            "startTime": _ms(start),
            "endTime": _ms(end),
            "limit": 100,
        }
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            answer = await self._call("read", self._ex.privateGetV5ExecutionList(dict(query)))
            result = answer.get("result", {})
            fresh = [info for info in result.get("list", []) if str(info.get("execId")) not in seen]
            for info in fresh:
                seen.add(str(info.get("execId")))
                kind = _BYBIT_EXEC_KINDS.get(info.get("execType", ""))
                if kind is None:  # funding, settlement, ...: not a fill
                    continue
                trades.append(
                    Trade(
                        trade_id=str(info["execId"]),
                        order_id=info.get("orderId"),
                        side=OrderSide(info["side"].lower()),
                        price=Decimal(info["execPrice"]),
                        quantity=Decimal(info["execQty"]),
                        realized_pnl=None,
                        at=_from_ms(info["execTime"]),
                        kind=kind,
                    )
                )
            cursor = result.get("nextPageCursor")
            if not cursor or not fresh or cursor == query.get("cursor"):
                break
            query["cursor"] = cursor
        return trades

    async def fetch_balance(self) -> Balance:
        balance = await self._call("read", self._ex.fetch_balance())
        info = balance["info"]
        if self._binance:
            for asset in info.get("assets", []):
                if asset.get("asset") == "USDT":
                    return Balance(
                        "USDT",
                        _dec(asset.get("walletBalance") or asset.get("marginBalance")) or Decimal(0),
                        _dec(asset.get("availableBalance")),
                    )
            return Balance("USDT", Decimal(0), Decimal(0))
        for account in info.get("result", {}).get("list", []):
            for coin in account.get("coin", []):
                if coin.get("coin") == "USDT":
                    return Balance(
                        "USDT", _dec(coin.get("walletBalance")) or Decimal(0), _dec(coin.get("availableToWithdraw"))
                    )
        return Balance("USDT", Decimal(0), Decimal(0))

    async def close(self) -> None:
        await self._ex.close()
