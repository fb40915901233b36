"""Bybit v5 front end of the simulator: the /v5 REST endpoints ccxt's bybit uses for linear perpetuals.

Authentication is by API key only (header ``X-BAPI-API-KEY``; signatures are not checked). GET parameters
arrive in the query string, POST parameters as a JSON body. Every JSON answer, errors included, is the
envelope ``{"retCode", "retMsg", "result", "retExtInfo", "time"}``; errors use HTTP 200 like Bybit does.
The account is a unified trading account (UTA 2.0) in one-way mode; only ``category=linear`` has data.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from aiohttp import web

from egis.simulator.core import (
    Account,
    Order,
    OrderRejected,
    OrderRequest,
    OrderSource,
    OrderStatus,
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
    decimal_param,
    fmt,
    in_window,
    limit_param,
    optional,
    optional_int,
    parse_bool,
    required,
)

VENUE = "bybit"
MAX_LEVERAGE = Decimal(100)
PARAMS_ERROR = 10001

Result = dict[str, Any]

_REDUCE_ONLY_MESSAGES = {
    170131: "Insufficient balance.",
    110017: "current position is zero, cannot fix reduce-only order qty",
}
_REJECTIONS: dict[RejectReason, tuple[int, str]] = {
    RejectReason.DUPLICATE_CLIENT_ORDER_ID: (110072, "OrderLinkedID is duplicate"),
    RejectReason.INSUFFICIENT_MARGIN: (110007, "ab not enough for new order"),
}
_ACCOUNT_INFO: Result = {
    "unifiedMarginStatus": 6,
    "marginMode": "REGULAR_MARGIN",
    "isMasterTrader": False,
    "spotHedgingStatus": "OFF",
    "dcpStatus": "OFF",
    "timeWindow": 10,
    "smpGroup": 0,
}
_SIDES = {Side.BUY: "Buy", Side.SELL: "Sell"}
_STATUSES = {OrderStatus.FILLED: "Filled"}


class BybitFrontEnd(FrontEnd):
    """Serves the Bybit v5 REST protocol (linear perpetuals, one-way mode, UTA) from a SimulatorCore."""

    path_prefix = "/v5/"
    api_key_header = "X-BAPI-API-KEY"

    def error_response(self, code: int, msg: str, http_status: int | None = None) -> web.Response:
        """A Bybit error envelope (HTTP 200 unless given)."""
        return _envelope(code, msg, {}, http_status or 200)

    def rate_limit_response(self) -> web.Response:
        """Bybit's answer over the rate limit: retCode 10006 with HTTP 200."""
        return self.error_response(10006, "Too many visits. Exceeded the API Rate Limit.")

    def reject_code(self, reason: RejectReason) -> int:
        """The Bybit retCode answering a rejected order (the reduce-only code follows the settings)."""
        return self._rejection(reason)[0]

    # ------------------------------------------------------------------ plumbing

    def _public_endpoints(self) -> dict[tuple[str, str], PublicHandler]:
        return {
            ("GET", "/v5/market/instruments-info"): self._instruments_info,
            ("GET", "/v5/market/time"): lambda _: _server_time(),
            ("GET", "/v5/market/tickers"): self._tickers,
        }

    def _private_endpoints(self) -> dict[tuple[str, str], PrivateHandler]:
        return {
            ("GET", "/v5/account/wallet-balance"): self._wallet_balance,
            ("GET", "/v5/account/info"): lambda _, __: _ACCOUNT_INFO | {"updatedTime": str(now_ms())},
            ("GET", "/v5/user/query-api"): lambda _, a: _api_key_info(a.api_key),
            ("GET", "/v5/position/list"): self._position_list,
            ("POST", "/v5/position/set-leverage"): self._set_leverage,
            ("POST", "/v5/order/create"): self._create_order,
            ("POST", "/v5/order/cancel"): self._cancel_order,
            ("GET", "/v5/order/realtime"): self._realtime_orders,
            ("GET", "/v5/order/history"): self._order_history,
            ("GET", "/v5/execution/list"): self._executions,
        }

    def _success_response(self, payload: Payload) -> web.Response:
        assert isinstance(payload, dict), "every Bybit result is an object"
        return _envelope(0, "OK", payload)

    def _missing_key_error(self) -> ApiError:
        return ApiError(10003, "API key is invalid.")

    def _invalid_request_error(self, exc: BadParameter | UnknownSymbol) -> ApiError:
        return ApiError(PARAMS_ERROR, f"params error: {exc}")

    def _rejection(self, reason: RejectReason) -> tuple[int, str]:
        if reason is RejectReason.REDUCE_ONLY_REJECTED:
            code = self._core.settings.bybit_reduce_only_code
            return code, _REDUCE_ONLY_MESSAGES[code]
        return _REJECTIONS.get(reason, (PARAMS_ERROR, "params error"))

    def _markets(self, params: Params) -> list[MarketSpec]:
        """The market named by ``symbol``, or all of them."""
        symbol = optional(params, "symbol")
        if symbol is None:
            return list(self._core.markets.values())
        return [self._core.market(symbol)]

    # ------------------------------------------------------------------ market data

    def _instruments_info(self, params: Params) -> Result:
        """Linear instruments; other categories and statuses (e.g. ``PreLaunch``) have none."""
        wanted = _is_linear(params) and optional(params, "status") in (None, "Trading")
        symbol = optional(params, "symbol")
        rows = [_instrument(m) for m in self._core.markets.values() if wanted and symbol in (None, m.symbol)]
        return {"category": _category(params), "list": rows, "nextPageCursor": ""}

    def _tickers(self, params: Params) -> Result:
        markets = self._markets(params) if _is_linear(params) else []
        return {"category": _category(params), "list": [self._ticker(m) for m in markets]}

    def _ticker(self, market: MarketSpec) -> dict[str, Any]:
        price = fmt(self._core.mark_prices[market.symbol])
        now = now_ms()
        return {
            "symbol": market.symbol,
            "lastPrice": price,
            "indexPrice": price,
            "markPrice": price,
            "prevPrice24h": price,
            "price24hPcnt": "0",
            "highPrice24h": price,
            "lowPrice24h": price,
            "prevPrice1h": price,
            "openInterest": "0",
            "openInterestValue": "0",
            "turnover24h": "0",
            "volume24h": "0",
            "fundingRate": "0",
            "nextFundingTime": str(now - now % 28_800_000 + 28_800_000),
            "predictedDeliveryPrice": "",
            "basisRate": "",
            "deliveryFeeRate": "",
            "deliveryTime": "0",
            "bid1Price": price,
            "bid1Size": "1",
            "ask1Price": price,
            "ask1Size": "1",
            "basis": "",
        }

    # ------------------------------------------------------------------ account and positions

    def _wallet_balance(self, params: Params, account: Account) -> Result:
        balance = self._core.balance(account)
        margin = fmt(balance.initial_margin)
        equity = fmt(balance.equity)
        im_rate = balance.initial_margin / balance.equity if balance.equity > 0 else Decimal(0)
        coin = {
            "coin": "USDT",
            "equity": equity,
            "usdValue": equity,
            "walletBalance": fmt(balance.wallet),
            "locked": "0",
            "spotHedgingQty": "0",
            "borrowAmount": "0",
            "availableToWithdraw": "",
            "availableToBorrow": "",
            "accruedInterest": "0",
            "totalOrderIM": "0",
            "totalPositionIM": margin,
            "totalPositionMM": "0",
            "unrealisedPnl": fmt(balance.unrealized_pnl),
            "cumRealisedPnl": fmt(_realized(account.trades)),
            "bonus": "0",
            "marginCollateral": True,
            "collateralSwitch": True,
        }
        wanted_coin = optional(params, "coin")
        return {
            "list": [
                {
                    "accountType": "UNIFIED",
                    "accountIMRate": fmt(im_rate.quantize(Decimal("0.0001"))),
                    "accountMMRate": "0",
                    "accountLTV": "0",
                    "totalEquity": equity,
                    "totalWalletBalance": fmt(balance.wallet),
                    "totalMarginBalance": equity,
                    "totalAvailableBalance": fmt(balance.available),
                    "totalPerpUPL": fmt(balance.unrealized_pnl),
                    "totalInitialMargin": margin,
                    "totalMaintenanceMargin": "0",
                    "coin": [coin] if wanted_coin in (None, "USDT") else [],
                }
            ]
        }

    def _position_list(self, params: Params, account: Account) -> Result:
        """With ``symbol`` the row is returned even when flat; with ``settleCoin`` only open positions."""
        symbol = optional(params, "symbol")
        settle_coin = optional(params, "settleCoin")
        if symbol is None and settle_coin is None:
            raise BadParameter("symbol or settleCoin is required")
        if not _is_linear(params):
            positions: list[Position] = []
        elif symbol is not None:
            positions = [account.position(self._core.market(symbol).symbol)]
        else:
            positions = account.open_positions() if settle_coin == "USDT" else []
        rows = [self._position_row(account, p) for p in positions]
        return {"category": _category(params), "list": rows, "nextPageCursor": ""}

    def _position_row(self, account: Account, position: Position) -> dict[str, Any]:
        mark = self._core.mark_prices[position.symbol]
        leverage = account.leverage_for(position.symbol)
        size = abs(position.quantity)
        margin = fmt(abs(position.notional(mark)) / leverage)
        side = "" if not position.quantity else _SIDES[Side.BUY if position.quantity > 0 else Side.SELL]
        updated = str(position.updated_ms)
        return {
            "positionIdx": 0,
            "riskId": 1,
            "riskLimitValue": "2000000",
            "symbol": position.symbol,
            "side": side,
            "size": fmt(size),
            "avgPrice": fmt(position.entry_price),
            "positionValue": fmt(size * position.entry_price),
            "tradeMode": 0,
            "positionStatus": "Normal",
            "autoAddMargin": 0,
            "adlRankIndicator": 2 if size else 0,
            "leverage": fmt(leverage),
            "positionBalance": margin,
            "markPrice": fmt(mark),
            "liqPrice": "",
            "bustPrice": "",
            "positionMM": "0",
            "positionIM": margin,
            "tpslMode": "Full",
            "takeProfit": "0",
            "stopLoss": "0",
            "trailingStop": "0",
            "unrealisedPnl": fmt(position.unrealized_pnl(mark)),
            "curRealisedPnl": "0",
            "cumRealisedPnl": fmt(_realized(t for t in account.trades if t.symbol == position.symbol)),
            "seq": 0,
            "isReduceOnly": False,
            "mmrSysUpdatedTime": "",
            "leverageSysUpdatedTime": "",
            "createdTime": updated,
            "updatedTime": updated,
        }

    def _set_leverage(self, params: Params, account: Account) -> Result:
        _require_linear(params)
        symbol = self._core.market(required(params, "symbol")).symbol
        buy, sell = _leverage(params, "buyLeverage"), _leverage(params, "sellLeverage")
        if buy != sell:
            raise BadParameter("buyLeverage must equal sellLeverage in one-way mode")
        self._core.set_leverage(account.api_key, symbol, buy)
        return {}

    # ------------------------------------------------------------------ orders and executions

    def _create_order(self, params: Params, account: Account) -> Result:
        request = OrderRequest(
            api_key=account.api_key,
            venue=VENUE,
            symbol=str(params.get("symbol", "")),
            side=str(params.get("side", "")).upper(),
            order_type=str(params.get("orderType", "")).upper(),
            quantity=str(params.get("qty", "")),
            reduce_only=parse_bool(params.get("reduceOnly")),
            client_order_id=optional(params, "orderLinkId"),
        )
        try:
            problem = _unsupported_order_setting(params)
            if problem is not None:
                self._core.reject_order(request, RejectReason.BAD_PARAMETER, problem, self.reject_code)
            order = self._core.place_order(request, self.reject_code)
        except OrderRejected as exc:
            code, msg = self._rejection(exc.reason)
            raise ApiError(code, f"{msg}: {exc.detail}" if code == PARAMS_ERROR else msg) from exc
        return {"orderId": str(order.id), "orderLinkId": order.client_order_id or ""}

    def _cancel_order(self, params: Params, account: Account) -> Result:
        """Every order is filled on arrival, so there is never anything to cancel."""
        _require_linear(params)
        self._matching_orders(params, account)
        raise ApiError(110001, "order not exists or too late to cancel")

    def _realtime_orders(self, params: Params, account: Account) -> Result:
        """Orders named by ``orderId``/``orderLinkId`` in any status; otherwise the open ones (never any).

        An empty ``orderId`` counts as absent: ccxt sends ``orderId=`` when looking up by ``orderLinkId``.
        """
        named = optional(params, "orderId") is not None or optional(params, "orderLinkId") is not None
        orders = self._matching_orders(params, account) if named and _is_linear(params) else []
        return _order_page(params, orders, default_limit=20)

    def _order_history(self, params: Params, account: Account) -> Result:
        statuses = set((optional(params, "orderStatus") or "Filled").split(","))
        start, end = optional_int(params, "startTime"), optional_int(params, "endTime")
        orders = [
            o
            for o in self._matching_orders(params, account)
            if _STATUSES[o.status] in statuses and in_window(o.created_ms, start, end)
        ]
        return _order_page(params, orders if _is_linear(params) else [], default_limit=20)

    def _matching_orders(self, params: Params, account: Account) -> list[Order]:
        """The account's orders filtered by the optional ``symbol``, ``orderId`` and ``orderLinkId``."""
        symbol = optional(params, "symbol")
        if symbol is not None:
            self._core.market(symbol)
        order_id, link_id = optional(params, "orderId"), optional(params, "orderLinkId")
        return [
            o
            for o in account.orders.values()
            if symbol in (None, o.symbol) and order_id in (None, str(o.id)) and link_id in (None, o.client_order_id)
        ]

    def _executions(self, params: Params, account: Account) -> Result:
        """Executions newest first; every execution is a ``Trade`` (no funding or settlement rows)."""
        wanted = _is_linear(params) and optional(params, "execType") in (None, "Trade")
        orders = {o.id: o for o in self._matching_orders(params, account)} if wanted else {}
        start, end = optional_int(params, "startTime"), optional_int(params, "endTime")
        trades = [t for t in reversed(account.trades) if t.order_id in orders and in_window(t.time_ms, start, end)]
        rows = [_execution_json(t, orders[t.order_id]) for t in trades[: limit_param(params, 50, 100)]]
        return {"category": _category(params), "list": rows, "nextPageCursor": ""}


def _envelope(code: int, msg: str, result: Result, status: int = 200) -> web.Response:
    body = {"retCode": code, "retMsg": msg, "result": result, "retExtInfo": {}, "time": now_ms()}
    return web.json_response(body, status=status)


def _category(params: Params) -> str:
    return optional(params, "category") or ""


def _is_linear(params: Params) -> bool:
    return _category(params) == "linear"


def _require_linear(params: Params) -> None:
    if not _is_linear(params):
        raise BadParameter(f"category {_category(params)!r} is not supported, only linear")


def _unsupported_order_setting(params: Params) -> str | None:
    """Why an order's category or position index cannot be served (linear, one-way mode only), if so."""
    if not _is_linear(params):
        return f"category {_category(params)!r} is not supported, only linear"
    if str(params.get("positionIdx", 0)) not in ("0", ""):
        return "position idx not match position mode"
    return None


def _leverage(params: Params, name: str) -> Decimal:
    leverage = decimal_param(params, name)
    if not 1 <= leverage <= MAX_LEVERAGE:
        raise BadParameter(f"{name} must be between 1 and {MAX_LEVERAGE}")
    return leverage


def _realized(trades: Iterable[Trade]) -> Decimal:
    """Realized PnL net of fees over some trades."""
    return sum((t.realized_pnl - t.fee for t in trades), Decimal(0))


def _server_time() -> Result:
    now_ns = now_ms() * 1_000_000
    return {"timeSecond": str(now_ns // 1_000_000_000), "timeNano": str(now_ns)}


def _instrument(market: MarketSpec) -> dict[str, Any]:
    return {
        "symbol": market.symbol,
        "contractType": "LinearPerpetual",
        "status": "Trading",
        "baseCoin": market.base,
        "quoteCoin": market.quote,
        "settleCoin": market.quote,
        "launchTime": "1585526400000",
        "deliveryTime": "0",
        "deliveryFeeRate": "",
        "priceScale": str(market.price_decimals),
        "leverageFilter": {"minLeverage": "1", "maxLeverage": fmt(MAX_LEVERAGE), "leverageStep": "0.01"},
        "priceFilter": {
            "minPrice": fmt(market.tick_size),
            "maxPrice": "1999999",
            "tickSize": fmt(market.tick_size),
        },
        "lotSizeFilter": {
            "maxOrderQty": fmt(market.max_qty),
            "maxMktOrderQty": fmt(market.max_qty),
            "minOrderQty": fmt(market.min_qty),
            "qtyStep": fmt(market.qty_step),
            "postOnlyMaxOrderQty": fmt(market.max_qty),
            "minNotionalValue": fmt(market.min_notional),
        },
        "unifiedMarginTrade": True,
        "fundingInterval": 480,
        "copyTrading": "both",
        "upperFundingRate": "0.005",
        "lowerFundingRate": "-0.005",
        "isPreListing": False,
        "preListingInfo": None,
    }


def _order_page(params: Params, orders: list[Order], *, default_limit: int) -> Result:
    newest_first = sorted(orders, key=lambda o: o.id, reverse=True)[: limit_param(params, default_limit, 50)]
    return {
        "category": _category(params),
        "list": [_order_json(o) for o in newest_first],
        "nextPageCursor": "",
    }


def _order_json(order: Order) -> dict[str, Any]:
    return {
        "orderId": str(order.id),
        "orderLinkId": order.client_order_id or "",
        "blockTradeId": "",
        "symbol": order.symbol,
        "price": "0",
        "qty": fmt(order.quantity),
        "side": _SIDES[order.side],
        "isLeverage": "",
        "positionIdx": 0,
        "orderStatus": _STATUSES[order.status],
        "cancelType": "UNKNOWN",
        "rejectReason": "EC_NoError",
        "avgPrice": fmt(order.avg_price),
        "leavesQty": "0",
        "leavesValue": "0",
        "cumExecQty": fmt(order.executed_qty),
        "cumExecValue": fmt(order.cum_quote),
        "cumExecFee": fmt(order.fee),
        "timeInForce": "IOC",
        "orderType": "Market",
        "stopOrderType": "",
        "orderIv": "",
        "triggerPrice": "",
        "takeProfit": "",
        "stopLoss": "",
        "triggerBy": "",
        "triggerDirection": 0,
        "reduceOnly": order.reduce_only,
        "closeOnTrigger": False,
        "smpType": "None",
        "smpGroup": 0,
        "smpOrderId": "",
        "placeType": "",
        "createType": _create_type(order),
        "createdTime": str(order.created_ms),
        "updatedTime": str(order.updated_ms),
    }


def _create_type(order: Order) -> str:
    """Bybit's ``createType``: orders closed by the exchange (UI close, stop) are ``CreateByClosing``."""
    return "CreateByUser" if order.source is OrderSource.API else "CreateByClosing"


def _execution_json(trade: Trade, order: Order) -> dict[str, Any]:
    return {
        "symbol": trade.symbol,
        "orderId": str(trade.order_id),
        "orderLinkId": order.client_order_id or "",
        "side": _SIDES[trade.side],
        "orderPrice": "0",
        "orderQty": fmt(order.quantity),
        "leavesQty": "0",
        "createType": _create_type(order),
        "orderType": "Market",
        "stopOrderType": "",
        "execFee": fmt(trade.fee),
        "execId": f"{trade.id:08d}-sim",
        "execPrice": fmt(trade.price),
        "execQty": fmt(trade.quantity),
        "execType": "Trade",
        "execValue": fmt(trade.price * trade.quantity),
        "execTime": str(trade.time_ms),
        "feeCurrency": "USDT",
        "isMaker": False,
        "feeRate": fmt(trade.fee / (trade.price * trade.quantity)),
        "tradeIv": "",
        "markIv": "",
        "markPrice": fmt(trade.price),
        "indexPrice": fmt(trade.price),
        "underlyingPrice": "",
        "blockTradeId": "",
        "closedSize": fmt(trade.closed_qty),
        "seq": trade.id,
    }


def _api_key_info(api_key: str) -> Result:
    return {
        "id": str(zlib.crc32(api_key.encode())),
        "note": "egis simulator",
        "apiKey": api_key,
        "readOnly": 0,
        "secret": "",
        "permissions": {"ContractTrade": ["Order", "Position"], "Spot": [], "Wallet": [], "Options": []},
        "ips": ["*"],
        "type": 1,
        "deadlineDay": -1,
        "expiredAt": "",
        "createdAt": "",
        "unified": 0,
        "uta": 1,
        "userID": zlib.crc32(api_key.encode()),
        "inviterID": 0,
        "vipLevel": "No VIP",
        "mktMakerLevel": "0",
        "affiliateID": 0,
        "rsaPublicKey": "",
        "isMaster": True,
    }
