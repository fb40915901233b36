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
import functools
import json
import ssl
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import ccxt.async_support as ccxt_async
from ccxt.base.errors import BaseError, OrderNotFound

from egis.errors import UnknownSymbol
from egis.exchanges.accounts import AccountConfig
from egis.exchanges.base import (
    Balance,
    ExchangeCallError,
    ExchangePosition,
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


@functools.cache
def _ssl_context(cafile: str) -> ssl.SSLContext:
    """One TLS context per process: ccxt would build one per instance (per account), loading the
    whole CA bundle each time (~15-25 ms of CPU, again whenever an account file changes)."""
    return ssl.create_default_context(cafile=cafile)


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


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _from_ms(ms: Any) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


class CcxtGateway:
    records_fills_atomically = False

    def __init__(self, exchange: Exchange, account: str, config: AccountConfig) -> None:
        if exchange not in (Exchange.BINANCEUSDM, Exchange.BYBIT):
            raise ValueError(f"CcxtGateway serves binanceusdm and bybit, not {exchange}")
        self.exchange = exchange
        self.account = account
        params: dict[str, Any] = {
            "apiKey": config.api_key.get_secret_value() if config.api_key else None,
            "secret": config.secret.get_secret_value() if config.secret else None,
            "enableRateLimit": config.base_url is None,
            "timeout": config.timeout_ms,
        }
        cls = ccxt_async.binanceusdm if exchange is Exchange.BINANCEUSDM else ccxt_async.bybit
        self._ex = cls(params)
        if self._ex.verify:
            self._ex.ssl_context = _ssl_context(self._ex.cafile)
        if exchange is Exchange.BYBIT:
            self._ex.options["fetchMarkets"] = {**self._ex.options.get("fetchMarkets", {}), "types": ["linear"]}
        if config.base_url:
            point_to_local(self._ex, config.base_url)
        elif config.sandbox:
            self._ex.set_sandbox_mode(True)
        self._markets: dict[str, MarketRules] | None = None
        self._symbols: dict[str, str] = {}  # BTCUSDT -> BTC/USDT:USDT
        self._load_lock = asyncio.Lock()

    @property
    def _binance(self) -> bool:
        return self.exchange is Exchange.BINANCEUSDM

    async def _call(self, operation: Operation, awaitable: Awaitable[R]) -> R:
        try:
            return await awaitable
        except BaseError as exc:
            names = [c.__name__ for c in type(exc).__mro__ if issubclass(c, BaseError)]
            raise ExchangeCallError(self.exchange, operation, names, _error_code(exc), str(exc)) from None

    # ------------------------------------------------------------ markets
    async def load_markets(self) -> dict[str, MarketRules]:
        if self._markets is None:
            async with self._load_lock:
                if self._markets is None:
                    markets = await self._call("read", self._ex.load_markets())
                    rules: dict[str, MarketRules] = {}
                    for m in markets.values():
                        if m.get("swap") and m.get("linear") and m.get("settle") in ("USDT", "USDC"):
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
        if self._binance:
            if info.get("positionSide", "BOTH") not in ("BOTH", None):
                return None  # hedge-mode rows are not ours: Egis runs accounts in one-way mode
            amount = _dec(info.get("positionAmt")) or Decimal(0)
            if amount == 0:
                return None
            side = Side.LONG if amount > 0 else Side.SHORT
            return ExchangePosition(
                info["symbol"], side, abs(amount), _dec(info.get("entryPrice")), _dec(info.get("markPrice"))
            )
        size = _dec(info.get("size")) or Decimal(0)
        if size == 0 or info.get("side") not in ("Buy", "Sell"):
            return None
        side = Side.LONG if info["side"] == "Buy" else Side.SHORT
        entry = _dec(info.get("avgPrice")) or _dec(info.get("entryPrice"))
        return ExchangePosition(info["symbol"], side, size, entry, _dec(info.get("markPrice")))

    async def fetch_positions(self) -> list[ExchangePosition]:
        await self.load_markets()
        params = {} if self._binance else {"settleCoin": "USDT"}
        rows = await self._call("read", self._ex.fetch_positions(None, params))
        parsed = (self._parse_position(r["info"]) for r in rows)
        return [p for p in parsed if p is not None]

    async def fetch_position(self, symbol: str, side: Side) -> ExchangePosition | None:
        ccxt_symbol = await self._ccxt_symbol(symbol)
        rows = await self._call("read", self._ex.fetch_positions([ccxt_symbol]))
        for row in rows:
            position = self._parse_position(row["info"])
            if position is not None and position.symbol == symbol and position.side is side:
                return position
        return None

    # ------------------------------------------------------------ orders
    async def create_order(self, request: OrderRequest, *, record: RecordFill | None = None) -> OrderReport:
        """Validate locally (nothing is sent for a bad symbol or quantity), then send."""
        rules = await self.market(request.symbol)
        validate_quantity(request.quantity, rules, reduce_only=request.reduce_only)
        if request.intent is Intent.CLOSE and not request.reduce_only:
            raise ValueError("every close order is reduce-only")
        ccxt_symbol = self._symbols[request.symbol]
        params: dict[str, Any] = {"clientOrderId": request.client_order_id}
        if request.reduce_only:
            params["reduceOnly"] = True
        order = await self._call(
            request.intent.value,
            self._ex.create_order(ccxt_symbol, "market", request.side.value, str(request.quantity), None, params),
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
        """Last prices for many symbols in ONE request."""
        ccxt_symbols = [await self._ccxt_symbol(s) for s in symbols]
        tickers = await self._call("read", self._ex.fetch_tickers(ccxt_symbols))
        by_id = {v: k for k, v in self._symbols.items()}
        prices: dict[str, Decimal] = {}
        for ccxt_symbol, ticker in tickers.items():
            price = _dec(ticker["info"].get("lastPrice"))
            if ccxt_symbol in by_id and price is not None:
                prices[by_id[ccxt_symbol]] = price
        return {s: prices[s] for s in symbols if s in prices}

    async def fetch_closing_trades(self, symbol: str, side: Side, since: datetime) -> list[Trade]:
        """Trades on the closing side of a `side` position since `since` (to learn a ghost's exit)."""
        ccxt_symbol = await self._ccxt_symbol(symbol)
        closing = OrderSide.SELL if side is Side.LONG else OrderSide.BUY
        rows = await self._call("read", self._ex.fetch_my_trades(ccxt_symbol, _ms(since)))
        trades = []
        for row in rows:
            info = row["info"]
            if self._binance:
                trade = Trade(
                    trade_id=str(info["id"]),
                    order_id=str(info.get("orderId")),
                    side=OrderSide(info["side"].lower()),
                    price=Decimal(info["price"]),
                    quantity=Decimal(info["qty"]),
                    realized_pnl=_dec(info.get("realizedPnl")),
                    at=_from_ms(info["time"]),
                )
            else:
                trade = Trade(
                    trade_id=str(info["execId"]),
                    order_id=info.get("orderId"),
                    side=OrderSide(info["side"].lower()),
                    price=Decimal(info["execPrice"]),
                    quantity=Decimal(info["execQty"]),
                    realized_pnl=None,
                    at=_from_ms(info["execTime"]),
                )
            if trade.side is closing and trade.at >= since:
                trades.append(trade)
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
