"""Binance USD-M futures front end of the simulator: the /fapi REST endpoints ccxt's binanceusdm uses.

Authentication is by API key only (header ``X-MBX-APIKEY``; signatures are not checked). GET and DELETE
parameters arrive in the query string, POST parameters as a form body. Errors are ``{"code", "msg"}``
with HTTP 400 unless stated otherwise. Orders are answered in full (as for ``newOrderRespType=RESULT``).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, TypeVar

from aiohttp import web

from egis.simulator.core import (
    Account,
    Order,
    OrderRejected,
    OrderRequest,
    Position,
    RejectReason,
    Side,
    Trade,
    UnknownSymbol,
    now_ms,
)
from egis.simulator.markets import MarketSpec
from egis.simulator.wire import (
    ApiError,
    BadParameter,
    FrontEnd,
    Params,
    Payload,
    PrivateHandler,
    PublicHandler,
    fmt,
    in_window,
    limit_param,
    optional,
    optional_int,
    parse_bool,
    required,
)

VENUE = "binanceusdm"
MAX_LEVERAGE = 125
_MAX_NOTIONAL = "1000000"
_DELIVERY_DATE_PERPETUAL = 4133404800000

_REJECTIONS: dict[RejectReason, tuple[int, str]] = {
    RejectReason.UNKNOWN_SYMBOL: (-1121, "Invalid symbol."),
    RejectReason.BAD_PARAMETER: (-1102, "Mandatory parameter was not sent, was empty/null, or malformed."),
    RejectReason.UNSUPPORTED_ORDER_TYPE: (-1116, "Invalid orderType."),
    RejectReason.QTY_PRECISION: (-1111, "Precision is over the maximum defined for this asset."),
    RejectReason.QTY_TOO_SMALL: (-4003, "Quantity less than or equal to zero."),
    RejectReason.QTY_TOO_LARGE: (-4005, "Quantity greater than max quantity."),
    RejectReason.DUPLICATE_CLIENT_ORDER_ID: (-4116, "ClientOrderId is duplicated."),
    RejectReason.REDUCE_ONLY_REJECTED: (-2022, "ReduceOnly Order is rejected."),
    RejectReason.INSUFFICIENT_MARGIN: (-2019, "Margin is insufficient."),
}

_RATE_LIMITS = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
    {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
]

_Item = TypeVar("_Item")


def reject_code(reason: RejectReason) -> int:
    """The Binance error code answering a rejected order."""
    return _REJECTIONS[reason][0]


class BinanceFrontEnd(FrontEnd):
    """Serves the Binance USD-M futures REST protocol (one-way mode, USDT margin) from a SimulatorCore."""

    path_prefix = "/fapi/"
    api_key_header = "X-MBX-APIKEY"

    def error_response(self, code: int, msg: str, http_status: int | None = None) -> web.Response:
        """A Binance error answer (HTTP 400 unless given)."""
        return web.json_response({"code": code, "msg": msg}, status=http_status or 400)

    def rate_limit_response(self) -> web.Response:
        """Binance's answer over the request-weight limit: HTTP 429 with code -1003."""
        return self.error_response(
            -1003,
            "Too many requests; current limit of IP is 2400 requests per minute. "
            "Please use the websocket for live updates to avoid polling the API.",
            429,
        )

    # ------------------------------------------------------------------ plumbing

    def _public_endpoints(self) -> dict[tuple[str, str], PublicHandler]:
        return {
            ("GET", "/fapi/v1/exchangeInfo"): self._exchange_info,
            ("GET", "/fapi/v1/time"): lambda _: {"serverTime": now_ms()},
            ("GET", "/fapi/v1/ticker/24hr"): lambda p: self._per_symbol(p, self._ticker_24hr),
            ("GET", "/fapi/v1/ticker/price"): lambda p: self._per_symbol(p, self._ticker_price),
            ("GET", "/fapi/v2/ticker/price"): lambda p: self._per_symbol(p, self._ticker_price),
            ("GET", "/fapi/v1/premiumIndex"): lambda p: self._per_symbol(p, self._premium_index),
        }

    def _private_endpoints(self) -> dict[tuple[str, str], PrivateHandler]:
        return {
            ("GET", "/fapi/v2/account"): lambda _, a: self._account(a, version=2),
            ("GET", "/fapi/v3/account"): lambda _, a: self._account(a, version=3),
            ("GET", "/fapi/v1/leverageBracket"): lambda _, __: [],
            ("GET", "/fapi/v2/positionRisk"): lambda p, a: self._position_risk(p, a, version=2),
            ("GET", "/fapi/v3/positionRisk"): lambda p, a: self._position_risk(p, a, version=3),
            ("POST", "/fapi/v1/order"): self._new_order,
            ("GET", "/fapi/v1/order"): self._query_order,
            ("DELETE", "/fapi/v1/order"): self._cancel_order,
            ("GET", "/fapi/v1/openOrders"): self._open_orders,
            ("GET", "/fapi/v1/allOrders"): self._all_orders,
            ("GET", "/fapi/v1/userTrades"): self._user_trades,
            ("POST", "/fapi/v1/leverage"): self._set_leverage,
            ("POST", "/fapi/v1/listenKey"): lambda _, a: {"listenKey": _listen_key(a.api_key)},
        }

    def _success_response(self, payload: Payload) -> web.Response:
        return web.json_response(payload)

    def _missing_key_error(self) -> ApiError:
        return ApiError(-2015, "Invalid API-key, IP, or permissions for action.", 401)

    def _invalid_request_error(self, exc: BadParameter | UnknownSymbol) -> ApiError:
        if isinstance(exc, UnknownSymbol):
            return ApiError(-1121, "Invalid symbol.")
        return ApiError(-1102, str(exc))

    def _per_symbol(self, params: Params, row: Callable[[MarketSpec], dict[str, Any]]) -> Payload:
        """One row for ``symbol`` if given, else a list with a row per market."""
        symbol = optional(params, "symbol")
        if symbol is not None:
            return row(self._core.market(symbol))
        return [row(market) for market in self._core.markets.values()]

    # ------------------------------------------------------------------ market data

    def _exchange_info(self, _: Params) -> Payload:
        return {
            "timezone": "UTC",
            "serverTime": now_ms(),
            "futuresType": "U_MARGINED",
            "rateLimits": _RATE_LIMITS,
            "exchangeFilters": [],
            "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
            "symbols": [_symbol_info(market) for market in self._core.markets.values()],
        }

    def _ticker_24hr(self, market: MarketSpec) -> dict[str, Any]:
        price = fmt(self._core.mark_prices[market.symbol])
        now = now_ms()
        return {
            "symbol": market.symbol,
            "priceChange": "0",
            "priceChangePercent": "0",
            "weightedAvgPrice": price,
            "lastPrice": price,
            "lastQty": "0",
            "openPrice": price,
            "highPrice": price,
            "lowPrice": price,
            "volume": "0",
            "quoteVolume": "0",
            "openTime": now - 86_400_000,
            "closeTime": now,
            "firstId": 0,
            "lastId": 0,
            "count": 0,
        }

    def _ticker_price(self, market: MarketSpec) -> dict[str, Any]:
        return {
            "symbol": market.symbol,
            "price": fmt(self._core.mark_prices[market.symbol]),
            "time": now_ms(),
        }

    def _premium_index(self, market: MarketSpec) -> dict[str, Any]:
        price = fmt(self._core.mark_prices[market.symbol])
        now = now_ms()
        return {
            "symbol": market.symbol,
            "markPrice": price,
            "indexPrice": price,
            "estimatedSettlePrice": price,
            "lastFundingRate": "0.00000000",
            "interestRate": "0.00000000",
            "nextFundingTime": now - now % 28_800_000 + 28_800_000,
            "time": now,
        }

    # ------------------------------------------------------------------ account and positions

    def _account(self, account: Account, *, version: int) -> Payload:
        balance = self._core.balance(account)
        wallet, upnl = fmt(balance.wallet), fmt(balance.unrealized_pnl)
        equity, margin, available = fmt(balance.equity), fmt(balance.initial_margin), fmt(balance.available)
        asset = {
            "asset": "USDT",
            "walletBalance": wallet,
            "unrealizedProfit": upnl,
            "marginBalance": equity,
            "maintMargin": "0",
            "initialMargin": margin,
            "positionInitialMargin": margin,
            "openOrderInitialMargin": "0",
            "crossWalletBalance": wallet,
            "crossUnPnl": upnl,
            "availableBalance": available,
            "maxWithdrawAmount": available,
            "marginAvailable": True,
            "updateTime": now_ms(),
        }
        positions = self._account_positions(account, version)
        return {
            "totalInitialMargin": margin,
            "totalMaintMargin": "0",
            "totalWalletBalance": wallet,
            "totalUnrealizedProfit": upnl,
            "totalMarginBalance": equity,
            "totalPositionInitialMargin": margin,
            "totalOpenOrderInitialMargin": "0",
            "totalCrossWalletBalance": wallet,
            "totalCrossUnPnl": upnl,
            "availableBalance": available,
            "maxWithdrawAmount": available,
            "canTrade": True,
            "canDeposit": True,
            "canWithdraw": True,
            "multiAssetsMargin": False,
            "assets": [asset],
            "positions": [self._position_row(account, p, version) for p in positions],
        }

    def _account_positions(self, account: Account, version: int) -> list[Position]:
        """Version 2 lists every symbol (flat ones too), version 3 only open positions."""
        if version == 2:
            return [account.position(symbol) for symbol in self._core.markets]
        return account.open_positions()

    def _position_risk(self, params: Params, account: Account, *, version: int) -> Payload:
        symbol = optional(params, "symbol")
        if symbol is not None:
            self._core.market(symbol)
        positions = self._account_positions(account, version)
        return [self._position_row(account, p, version) for p in positions if symbol in (None, p.symbol)]

    def _position_row(self, account: Account, position: Position, version: int) -> dict[str, Any]:
        mark = self._core.mark_prices[position.symbol]
        leverage = account.leverage_for(position.symbol)
        notional = position.notional(mark)
        row: dict[str, Any] = {
            "symbol": position.symbol,
            "positionSide": "BOTH",
            "positionAmt": fmt(position.quantity),
            "entryPrice": fmt(position.entry_price),
            "breakEvenPrice": fmt(position.entry_price),
            "markPrice": fmt(mark),
            "unRealizedProfit": fmt(position.unrealized_pnl(mark)),
            "liquidationPrice": "0",
            "isolatedMargin": "0",
            "notional": fmt(notional),
            "isolatedWallet": "0",
            "updateTime": position.updated_ms,
        }
        if version == 2:
            row |= {
                "leverage": fmt(leverage),
                "maxNotionalValue": _MAX_NOTIONAL,
                "marginType": "cross",
                "isAutoAddMargin": "false",
            }
        else:
            margin = fmt(abs(notional) / leverage)
            row |= {
                "marginAsset": "USDT",
                "initialMargin": margin,
                "maintMargin": "0",
                "positionInitialMargin": margin,
                "openOrderInitialMargin": "0",
                "adl": 0,
                "bidNotional": "0",
                "askNotional": "0",
            }
        return row

    def _set_leverage(self, params: Params, account: Account) -> Payload:
        symbol = self._core.market(required(params, "symbol")).symbol
        leverage = optional_int(params, "leverage")
        if leverage is None or not 1 <= leverage <= MAX_LEVERAGE:
            raise ApiError(-4028, f"Leverage {params.get('leverage')} is not valid")
        self._core.set_leverage(account.api_key, symbol, Decimal(leverage))
        return {"leverage": leverage, "maxNotionalValue": _MAX_NOTIONAL, "symbol": symbol}

    # ------------------------------------------------------------------ orders and trades

    def _new_order(self, params: Params, account: Account) -> Payload:
        request = OrderRequest(
            api_key=account.api_key,
            venue=VENUE,
            symbol=str(params.get("symbol", "")),
            side=str(params.get("side", "")).upper(),
            order_type=str(params.get("type", "")).upper(),
            quantity=str(params.get("quantity", "")),
            reduce_only=parse_bool(params.get("reduceOnly")),
            client_order_id=optional(params, "newClientOrderId") or f"sim-{secrets.token_hex(8)}",
        )
        try:
            order = self._core.place_order(request, reject_code)
        except OrderRejected as exc:
            code, msg = _REJECTIONS[exc.reason]
            raise ApiError(code, exc.detail if exc.reason is RejectReason.BAD_PARAMETER else msg) from exc
        return _order_json(order)

    def _lookup_order(self, params: Params, account: Account) -> Order | None:
        """The order named by ``symbol`` and ``orderId`` or ``origClientOrderId`` (the latter wins)."""
        symbol = self._core.market(required(params, "symbol")).symbol
        client_order_id = optional(params, "origClientOrderId")
        order_id = optional_int(params, "orderId")
        if client_order_id is not None:
            return next(
                (o for o in account.orders.values() if o.symbol == symbol and _client_id(o) == client_order_id),
                None,
            )
        if order_id is None:
            raise BadParameter("Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        return account.order_by_id(symbol, order_id)

    def _query_order(self, params: Params, account: Account) -> Payload:
        order = self._lookup_order(params, account)
        if order is None:
            raise ApiError(-2013, "Order does not exist.")
        return _order_json(order)

    def _cancel_order(self, params: Params, account: Account) -> Payload:
        """Every order is filled on arrival, so there is never anything to cancel."""
        self._lookup_order(params, account)
        raise ApiError(-2011, "Unknown order sent.")

    def _open_orders(self, params: Params, _: Account) -> Payload:
        """Market orders never rest: the list is always empty (the symbol is still validated)."""
        symbol = optional(params, "symbol")
        if symbol is not None:
            self._core.market(symbol)
        return []

    def _all_orders(self, params: Params, account: Account) -> Payload:
        symbol = self._core.market(required(params, "symbol")).symbol
        from_id = optional_int(params, "orderId")
        start, end = optional_int(params, "startTime"), optional_int(params, "endTime")
        orders = [
            o
            for o in sorted(account.orders.values(), key=lambda o: o.id)
            if o.symbol == symbol and (from_id is None or o.id >= from_id) and in_window(o.created_ms, start, end)
        ]
        page = _page(orders, limit_param(params, 500, 1000), oldest_first=from_id is not None or start is not None)
        return [_order_json(o) for o in page]

    def _user_trades(self, params: Params, account: Account) -> Payload:
        symbol = self._core.market(required(params, "symbol")).symbol
        from_id = optional_int(params, "fromId")
        start, end = optional_int(params, "startTime"), optional_int(params, "endTime")
        trades = [
            t
            for t in account.trades
            if t.symbol == symbol and (from_id is None or t.id >= from_id) and in_window(t.time_ms, start, end)
        ]
        page = _page(trades, limit_param(params, 500, 1000), oldest_first=from_id is not None or start is not None)
        return [_trade_json(t) for t in page]


def _page(items: Sequence[_Item], limit: int, *, oldest_first: bool) -> list[_Item]:
    """Binance paging: the first ``limit`` items from a given start, else the most recent ``limit``."""
    return list(items[:limit] if oldest_first else items[-limit:])


def _symbol_info(market: MarketSpec) -> dict[str, Any]:
    tick, step = fmt(market.tick_size), fmt(market.qty_step)
    lot = {"stepSize": step, "minQty": fmt(market.min_qty), "maxQty": fmt(market.max_qty)}
    return {
        "symbol": market.symbol,
        "pair": market.symbol,
        "contractType": "PERPETUAL",
        "deliveryDate": _DELIVERY_DATE_PERPETUAL,
        "onboardDate": 1569398400000,
        "status": "TRADING",
        "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000",
        "baseAsset": market.base,
        "quoteAsset": market.quote,
        "marginAsset": market.quote,
        "pricePrecision": market.price_decimals,
        "quantityPrecision": market.qty_decimals,
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "underlyingType": "COIN",
        "underlyingSubType": [],
        "settlePlan": 0,
        "triggerProtect": "0.0500",
        "liquidationFee": "0.012500",
        "marketTakeBound": "0.05",
        "maxMoveOrderLimit": 10000,
        "filters": [
            {"filterType": "PRICE_FILTER", "tickSize": tick, "minPrice": tick, "maxPrice": "1000000"},
            {"filterType": "LOT_SIZE", **lot},
            {"filterType": "MARKET_LOT_SIZE", **lot},
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MIN_NOTIONAL", "notional": fmt(market.min_notional)},
            {
                "filterType": "PERCENT_PRICE",
                "multiplierUp": "1.0500",
                "multiplierDown": "0.9500",
                "multiplierDecimal": "4",
            },
        ],
        "orderTypes": ["LIMIT", "MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
    }


def _client_id(order: Order) -> str:
    """The order's client id; exchange-side orders get a Binance-UI-style ``web_`` id."""
    return order.client_order_id or f"web_{order.id}"


def _order_json(order: Order) -> dict[str, Any]:
    return {
        "orderId": order.id,
        "symbol": order.symbol,
        "status": order.status.value,
        "clientOrderId": _client_id(order),
        "price": "0",
        "avgPrice": fmt(order.avg_price),
        "origQty": fmt(order.quantity),
        "executedQty": fmt(order.executed_qty),
        "cumQty": fmt(order.executed_qty),
        "cumQuote": fmt(order.cum_quote),
        "timeInForce": "GTC",
        "type": "MARKET",
        "reduceOnly": order.reduce_only,
        "closePosition": False,
        "side": order.side.value,
        "positionSide": "BOTH",
        "stopPrice": "0",
        "workingType": "CONTRACT_PRICE",
        "priceProtect": False,
        "origType": "MARKET",
        "priceMatch": "NONE",
        "selfTradePreventionMode": "EXPIRE_MAKER",
        "goodTillDate": 0,
        "time": order.created_ms,
        "updateTime": order.updated_ms,
    }


def _trade_json(trade: Trade) -> dict[str, Any]:
    return {
        "symbol": trade.symbol,
        "id": trade.id,
        "orderId": trade.order_id,
        "side": trade.side.value,
        "price": fmt(trade.price),
        "qty": fmt(trade.quantity),
        "realizedPnl": fmt(trade.realized_pnl),
        "marginAsset": "USDT",
        "quoteQty": fmt(trade.price * trade.quantity),
        "commission": fmt(trade.fee),
        "commissionAsset": "USDT",
        "time": trade.time_ms,
        "positionSide": "BOTH",
        "buyer": trade.side is Side.BUY,
        "maker": False,
    }


def _listen_key(api_key: str) -> str:
    """A stable user-data-stream key per API key."""
    return hashlib.sha256(f"listenKey:{api_key}".encode()).hexdigest()
