"""Bybit v5 front end of the simulator: the /v5 REST endpoints ccxt's bybit uses for linear perpetuals.

Sources (quoted per behaviour below): the Bybit v5 docs, bybit-exchange/docs ``docs/v5/...`` (published at
https://bybit-exchange.github.io/docs/v5/), and real answers quoted in public issues.

Authentication (docs/v5/guide.mdx): header ``X-BAPI-API-KEY`` names a key registered with the simulator
(unknown: 10003); ``X-BAPI-TIMESTAMP`` must satisfy server_time - recv_window <= timestamp < server_time +
1000 (10002), and ``X-BAPI-SIGN`` = HMAC-SHA256 hex of timestamp + API key + recv_window + (GET: query
string, POST: JSON body) (10004). GET parameters arrive in the query string, POST parameters as a JSON
body. Every JSON answer, errors included, is the envelope ``{"retCode", "retMsg", "result", "retExtInfo",
"time"}`` at HTTP 200; the IP limit answers HTTP 403. Every answer carries ``X-Bapi-Limit``,
``X-Bapi-Limit-Status`` and ``X-Bapi-Limit-Reset-Timestamp``. The account is a unified trading account
(UTA 2.0), one-way or hedge mode per symbol; only ``category=linear`` has data.
"""

from __future__ import annotations

import functools
import hmac
import zlib
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import quote, unquote

from aiohttp import web

from egis.simulator.core import (
    Account,
    Order,
    OrderRejected,
    OrderRequest,
    OrderSource,
    OrderStatus,
    Position,
    PositionSide,
    RejectReason,
    Side,
    SimulatorError,
    Trade,
    UnknownSymbol,
    VenueRules,
)
from egis.simulator.limits import BybitStatus, Verdict
from egis.simulator.markets import MarketSpec
from egis.simulator.wire import (
    WEEK_MS,
    ApiError,
    BadParameter,
    FrontEnd,
    Params,
    Payload,
    PrivateHandler,
    PublicHandler,
    WindowError,
    client_ip,
    decimal_param,
    fmt,
    header_int,
    hmac_sha256_hex,
    in_window,
    limit_param,
    lookup_window,
    optional,
    optional_int,
    page_limit,
    parse_bool,
    raw_of,
    required,
)

VENUE = "bybit"
MAX_LEVERAGE = Decimal(100)
PARAMS_ERROR = 10001
DEFAULT_RECV_WINDOW = 5000  # "X-BAPI-RECV-WINDOW (unit in millisecond and default value is 5,000)" (guide.mdx)

Result = dict[str, Any]
T = TypeVar("T")
PageKey = tuple[str, int]
_STATUS_KEY = web.RequestKey("bybit_limit_status", BybitStatus)

# 110017: "current position is zero, cannot fix reduce-only order qty" / "reduce-only order has same side
# with current position" (real linear answers, shared/notes/exchange-fidelity.md; the first also quoted in
# sieblyio/bybit-api#193). 170131 "Insufficient balance." is listed under Spot only in docs/v5/error.mdx but
# was seen by a bot (seed 003), so it stays available through the bybit_reduce_only_code setting.
_REDUCE_ONLY_MESSAGES = {
    (110017, True): "current position is zero, cannot fix reduce-only order qty",
    (110017, False): "reduce-only order has same side with current position",
    (170131, True): "Insufficient balance.",
    (170131, False): "Insufficient balance.",
}
_REJECTIONS: dict[RejectReason, tuple[int, str]] = {
    RejectReason.DUPLICATE_CLIENT_ORDER_ID: (110072, "OrderLinkedID is duplicate"),
    RejectReason.INSUFFICIENT_MARGIN: (110007, "ab not enough for new order"),
    # Below minOrderQty: 10001 "The number of contracts exceeds minimum limit allowed" (real answer quoted in
    # bybit-exchange/pybit#168).
    RejectReason.QTY_TOO_SMALL: (PARAMS_ERROR, "The number of contracts exceeds minimum limit allowed"),
    # Below minNotionalValue: 110094 "Order notional value below the lower limit" (docs/v5/error.mdx).
    RejectReason.NOTIONAL_TOO_SMALL: (110094, "Order notional value below the lower limit"),
    # positionIdx: "Under hedge-mode, this param is required" (docs/v5/order/create-order.mdx); 0 in one-way.
    RejectReason.POSITION_SIDE_MISMATCH: (PARAMS_ERROR, "position idx not match position mode"),
}
# Per UID and endpoint, requests per second (docs/v5/rate-limit/rate-limit.mdx, UTA2.0 Pro, linear).
_ENDPOINT_LIMITS = {
    "/v5/order/create": 10,
    "/v5/order/cancel": 10,
    "/v5/order/realtime": 50,
    "/v5/order/history": 50,
    "/v5/execution/list": 50,
    "/v5/position/list": 50,
    "/v5/position/set-leverage": 10,
    "/v5/position/switch-mode": 10,
    "/v5/account/wallet-balance": 50,
    "/v5/account/info": 50,
    "/v5/user/query-api": 10,
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
_STATUSES = {OrderStatus.FILLED: "Filled", OrderStatus.EXPIRED: "Cancelled", OrderStatus.CANCELED: "Cancelled"}
# positionIdx (docs/v5/enum.mdx): 0 one-way, 1 Buy side of hedge mode, 2 Sell side.
_POSITION_IDX = {PositionSide.BOTH: 0, PositionSide.LONG: 1, PositionSide.SHORT: 2}
# createType and execType of orders the exchange placed (docs/v5/enum.mdx): a close from the web/app
# position area is CreateByClosing; the liquidation engine's takeover CreateByTakeOver_PassThrough with
# execType BustTrade ("Takeover liquidation"); auto-deleveraging CreateByAdl_PassThrough / AdlTrade.
_CREATE_TYPES = {
    OrderSource.API: "CreateByUser",
    OrderSource.EXCHANGE: "CreateByClosing",
    OrderSource.LIQUIDATION: "CreateByTakeOver_PassThrough",
    OrderSource.ADL: "CreateByAdl_PassThrough",
}
_EXEC_TYPES = {
    OrderSource.API: "Trade",
    OrderSource.EXCHANGE: "Trade",
    OrderSource.LIQUIDATION: "BustTrade",
    OrderSource.ADL: "AdlTrade",
}
# Cursor paging. ``limit``: "Limit for data size per page. [1, 200]. Default: 20" (docs/v5/position/position.mdx)
# and "[1, 1000]. Default: 500" (docs/v5/market/instrument.mdx: "This endpoint returns 500 entries by default.
# There are now more than 500 linear symbols on the platform. As a result, you will need to use cursor for
# pagination or limit to get all entries"); ``cursor``: "Use the nextPageCursor token from the response to
# retrieve the next page of the result set" (both pages). The default of 20 positions is what real clients met:
# nautechsystems/nautilus_trader#2879 "Fix Bybit positions pagination to handle more than 20 positions".
_POSITION_PAGE = (20, 200)  # (default, maximum) rows per page
_INSTRUMENT_PAGE = (500, 1000)
# The 7-day rules return retCode 10001 "The time range between startTime and endTime cannot exceed 7 days"
# (measured live and quoted in public code; the same text is 181010 in docs/v5/error.mdx).
_TOO_WIDE = "The time range between startTime and endTime cannot exceed 7 days"


class BybitFrontEnd(FrontEnd):
    """Serves the Bybit v5 REST protocol (linear perpetuals, one-way or hedge mode, UTA) from a SimulatorCore."""

    path_prefix = "/v5/"
    api_key_header = "X-BAPI-API-KEY"

    def error_response(self, code: int, msg: str, http_status: int | None = None) -> web.Response:
        """A Bybit error envelope (HTTP 200 unless given)."""
        return self._envelope(code, msg, {}, http_status or 200)

    def reject_code(self, reason: RejectReason) -> int:
        """The Bybit retCode answering a rejected order (the reduce-only code follows the settings)."""
        return self._rejection(reason, position_flat=True)[0]

    # ------------------------------------------------------------------ rate limits

    def admit(self, request: web.Request, api_key: str | None) -> web.Response | None:
        """The IP limit (HTTP 403 and a ban) then, for private endpoints, the UID's endpoint limit (10006);
        see egis.simulator.limits for the sources."""
        settings, now, ip = self._core.settings, self._core.now_ms(), client_ip(request)
        verdict = self._core.bybit_limits.admit_ip(ip, now, settings.bybit_ip_limit, settings.bybit_ip_ban_seconds)
        if verdict.kind != "ok":
            return self._ip_refusal(verdict)
        if api_key and request.path in self._private_paths:
            limit = settings.bybit_endpoint_limit or _ENDPOINT_LIMITS.get(request.path, 10)
            allowed, status = self._core.bybit_limits.admit_endpoint(api_key, request.path, now, limit)
            request[_STATUS_KEY] = status
            if not allowed:
                return self._too_many_visits()
        return None

    def decorate(self, request: web.Request, response: web.StreamResponse, api_key: str | None) -> None:
        """``X-Bapi-Limit``, ``X-Bapi-Limit-Status`` (remaining), ``X-Bapi-Limit-Reset-Timestamp``: "Every
        request to the API returns response header" (docs/v5/rate-limit/rate-limit.mdx). Private answers
        report the UID's endpoint window; public ones, which have no UID, the IP window."""
        status = request.get(_STATUS_KEY)
        if status is None:
            now = self._core.now_ms()
            status = self._core.bybit_limits.ip_status(client_ip(request), now, self._core.settings.bybit_ip_limit)
        response.headers["X-Bapi-Limit"] = str(status.limit)
        response.headers["X-Bapi-Limit-Status"] = str(status.remaining)
        response.headers["X-Bapi-Limit-Reset-Timestamp"] = str(status.reset_ms)

    def rate_limit_response(self, request: web.Request) -> web.Response:
        """Bybit's answer over an endpoint's rate limit: retCode 10006 with HTTP 200."""
        now = self._core.now_ms()
        request[_STATUS_KEY] = BybitStatus(_ENDPOINT_LIMITS.get(request.path, 10), 0, now + 1000)
        return self._too_many_visits()

    def ban_response(self, request: web.Request, seconds: float) -> web.Response:
        """The IP limit: HTTP 403 "access too frequent", and the IP refused for ``seconds``."""
        return self._ip_refusal(self._core.bybit_limits.force_ban(client_ip(request), self._core.now_ms(), seconds))

    def _too_many_visits(self) -> web.Response:
        # "If you receive "retCode": 10006, "retMsg": "Too many visits!" in the JSON response, you have hit
        # the API rate limit" (docs/v5/rate-limit/rate-limit.mdx; docs/v5/error.mdx words it as below).
        return self.error_response(10006, "Too many visits. Exceeded the API Rate Limit.")

    def _ip_refusal(self, _: Verdict) -> web.Response:
        # "If you encounter the error "403, access too frequent", it indicates that your IP has exceeded the
        # allowed request frequency ... wait for at least 10 minutes" (docs/v5/rate-limit/rate-limit.mdx).
        return web.Response(status=403, text="access too frequent", content_type="text/plain")

    @functools.cached_property
    def _private_paths(self) -> frozenset[str]:
        return frozenset(path for _, path in self._private_endpoints())

    # ------------------------------------------------------------------ plumbing

    def _public_endpoints(self) -> dict[tuple[str, str], PublicHandler]:
        return {
            ("GET", "/v5/market/instruments-info"): self._instruments_info,
            ("GET", "/v5/market/time"): lambda _: self._server_time(),
            ("GET", "/v5/market/tickers"): self._tickers,
        }

    def _private_endpoints(self) -> dict[tuple[str, str], PrivateHandler]:
        return {
            ("GET", "/v5/account/wallet-balance"): self._wallet_balance,
            ("GET", "/v5/account/info"): lambda _, __: _ACCOUNT_INFO | {"updatedTime": str(self._core.now_ms())},
            ("GET", "/v5/user/query-api"): lambda _, a: _api_key_info(a.api_key),
            ("GET", "/v5/position/list"): self._position_list,
            ("POST", "/v5/position/set-leverage"): self._set_leverage,
            ("POST", "/v5/position/switch-mode"): self._switch_mode,
            ("POST", "/v5/order/create"): self._create_order,
            ("POST", "/v5/order/cancel"): self._cancel_order,
            ("GET", "/v5/order/realtime"): self._realtime_orders,
            ("GET", "/v5/order/history"): self._order_history,
            ("GET", "/v5/execution/list"): self._executions,
        }

    def _success_response(self, payload: Payload) -> web.Response:
        assert isinstance(payload, dict), "every Bybit result is an object"
        return self._envelope(0, "OK", payload)

    def _authenticate(self, request: web.Request, api_key: str | None, *, signed: bool) -> Account:
        secret = self._secret(api_key)
        if api_key is None or secret is None:  # 10003 "API key is invalid." (docs/v5/error.mdx)
            raise ApiError(10003, "API key is invalid.")
        if signed and self._core.settings.check_signatures:
            self._check_signed(request, api_key, secret)
        return self._core.account(api_key)

    def _check_signed(self, request: web.Request, api_key: str, secret: str) -> None:
        """Timestamp rule and signature (docs/v5/guide.mdx, "HTTP Headers for Authenticated Endpoints")."""
        timestamp = header_int(request, "X-BAPI-TIMESTAMP")
        raw_recv = request.headers.get("X-BAPI-RECV-WINDOW", "")
        recv_window = header_int(request, "X-BAPI-RECV-WINDOW") or DEFAULT_RECV_WINDOW
        now = self._core.now_ms()
        if timestamp is None or not now - recv_window <= timestamp < now + 1000:
            # 10002 with the real message format, e.g. bybit-exchange/pybit#191: "invalid request, please check
            # your server timestamp or recv_window param. req_timestamp[1706972576658],server_timestamp[
            # 1706972587026],recv_window[5000]".
            raise ApiError(
                10002,
                "invalid request, please check your server timestamp or recv_window param. "
                f"req_timestamp[{'' if timestamp is None else timestamp}],server_timestamp[{now}],"
                f"recv_window[{recv_window}]",
            )
        raw_query, raw_body = raw_of(request)
        payload = f"{timestamp}{api_key}{raw_recv}{raw_body if request.method == 'POST' else raw_query}"
        signature = request.headers.get("X-BAPI-SIGN", "")
        if not hmac.compare_digest(signature.lower(), hmac_sha256_hex(secret, payload)):
            raise ApiError(10004, "Error sign, please check your signature generation algorithm.")

    def _invalid_request_error(self, exc: BadParameter | UnknownSymbol) -> ApiError:
        return ApiError(PARAMS_ERROR, f"params error: {exc}")

    def _rejection(self, reason: RejectReason, *, position_flat: bool) -> tuple[int, str]:
        if reason is RejectReason.REDUCE_ONLY_REJECTED:
            code = self._core.settings.bybit_reduce_only_code
            return code, _REDUCE_ONLY_MESSAGES[code, position_flat]
        return _REJECTIONS.get(reason, (PARAMS_ERROR, "params error"))

    def _markets(self, params: Params) -> list[MarketSpec]:
        """The market named by ``symbol``, or all of them."""
        symbol = optional(params, "symbol")
        if symbol is None:
            return list(self._core.markets.values())
        return [self._core.market(symbol)]

    def _envelope(self, code: int, msg: str, result: Result, status: int = 200) -> web.Response:
        body = {"retCode": code, "retMsg": msg, "result": result, "retExtInfo": {}, "time": self._core.now_ms()}
        return web.json_response(body, status=status)

    def _server_time(self) -> Result:
        now_ns = self._core.now_ms() * 1_000_000
        return {"timeSecond": str(now_ns // 1_000_000_000), "timeNano": str(now_ns)}

    # ------------------------------------------------------------------ market data

    def _instruments_info(self, params: Params) -> Result:
        """Linear instruments; other categories and statuses (e.g. ``PreLaunch``) have none.

        Paged (``limit``, ``cursor``, see _INSTRUMENT_PAGE), by symbol; "Spot does not support pagination, so
        limit, cursor are invalid" (docs/v5/market/instrument.mdx): spot ignores them (and has no rows)."""
        wanted = _is_linear(params) and optional(params, "status") in (None, "Trading")
        symbol = optional(params, "symbol")
        markets = [m for m in self._core.markets.values() if wanted and symbol in (None, m.symbol)]
        if _category(params) == "spot":
            page, cursor = markets, ""
        else:
            default, maximum = _INSTRUMENT_PAGE
            page, cursor = _page(markets, lambda m: (m.symbol, 0), params, default=default, maximum=maximum)
        return {"category": _category(params), "list": [_instrument(m) for m in page], "nextPageCursor": cursor}

    def _tickers(self, params: Params) -> Result:
        markets = self._markets(params) if _is_linear(params) else []
        return {"category": _category(params), "list": [self._ticker(m) for m in markets]}

    def _ticker(self, market: MarketSpec) -> dict[str, Any]:
        price = fmt(self._core.mark_prices[market.symbol])
        now = self._core.now_ms()
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
        """With ``symbol`` the rows are returned even when flat (one, or two in hedge mode: positionIdx 1
        and 2); with ``settleCoin`` only open positions. ``settleCoin``: "linear: either symbol or settleCoin
        is required"; "category=inverse: You can query all open positions with /v5/position/list?category=
        inverse" (docs/v5/position/position.mdx): the simulator has no inverse positions, so that is an empty
        list (ccxt.pro's positions snapshot asks for linear and inverse positions, pro/bybit.py
        load_positions_snapshot).

        Paged (``limit``, ``cursor``, see _POSITION_PAGE): rows by symbol, then positionIdx."""
        symbol = optional(params, "symbol")
        settle_coin = optional(params, "settleCoin")
        if _is_linear(params) and symbol is None and settle_coin is None:
            raise BadParameter("symbol or settleCoin is required")
        if not _is_linear(params):
            positions: list[Position] = []
        elif symbol is not None:
            positions = account.symbol_positions(self._core.market(symbol).symbol)
        else:
            positions = account.open_positions() if settle_coin == "USDT" else []
        default, maximum = _POSITION_PAGE
        page, cursor = _page(positions, _position_key, params, default=default, maximum=maximum)
        realized = _realized_by_symbol(account.trades)  # once per page, not once per row
        rows = [self.position_row(account, p, realized.get(p.symbol, Decimal(0))) for p in page]
        return {"category": _category(params), "list": rows, "nextPageCursor": cursor}

    def position_row(self, account: Account, position: Position, realized: Decimal | None = None) -> dict[str, Any]:
        """One row of /v5/position/list. `realized`: the symbol's realized PnL when the caller has it
        (a page of rows sums the account's trades once)."""
        if realized is None:
            realized = _realized(t for t in account.trades if t.symbol == position.symbol)
        mark = self._core.mark_prices[position.symbol]
        leverage = account.leverage_for(position.symbol)
        size = abs(position.quantity)
        margin = fmt(abs(position.notional(mark)) / leverage)
        # side: "return an empty string "" for an empty position" (docs/v5/position/position.mdx)
        side = "" if not position.quantity else _SIDES[Side.BUY if position.quantity > 0 else Side.SELL]
        updated = str(position.updated_ms)
        return {
            "positionIdx": _POSITION_IDX[position.side],
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
            "cumRealisedPnl": fmt(realized),
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
            raise BadParameter("buyLeverage must equal sellLeverage (the simulator keeps one leverage per symbol)")
        self._core.set_leverage(account.api_key, symbol, buy)
        return {}

    def _switch_mode(self, params: Params, account: Account) -> Result:
        """Switch Position Mode (docs/v5/position/position-mode.mdx): ``mode`` 0 merged single (one-way), 3 both
        sides (hedge), for a ``symbol`` or every symbol of a ``coin`` (symbols with a position keep their
        mode); 110025 "Position mode has not been modified", 110024 "You have an existing position, so the
        position mode cannot be switched" (docs/v5/error.mdx)."""
        _require_linear(params)
        mode = optional_int(params, "mode")
        if mode not in (0, 3):
            raise BadParameter("mode must be 0 or 3")
        hedge = mode == 3
        symbol, coin = optional(params, "symbol"), optional(params, "coin")
        if symbol is None and coin is None:
            raise BadParameter("symbol or coin is required")
        if symbol is not None:
            symbol = self._core.market(symbol).symbol
            if account.is_hedge(symbol) == hedge:
                raise ApiError(110025, "Position mode has not been modified.")
            try:
                self._core.set_position_mode(account.api_key, hedge, symbol)
            except SimulatorError:
                raise ApiError(
                    110024, "You have an existing position, so the position mode cannot be switched."
                ) from None
            return {}
        if coin != "USDT":
            raise BadParameter(f"coin {coin!r} is not supported, only USDT")
        if account.hedge_default == hedge and all(account.is_hedge(s) == hedge for s in self._core.markets):
            raise ApiError(110025, "Position mode has not been modified.")
        self._core.set_position_mode(account.api_key, hedge)
        return {}

    # ------------------------------------------------------------------ orders and executions

    def _create_order(self, params: Params, account: Account) -> Result:
        position_side, idx_problem = _position_idx(params.get("positionIdx"))
        reduce_only = parse_bool(params.get("reduceOnly"))
        settings = self._core.settings
        request = OrderRequest(
            api_key=account.api_key,
            venue=VENUE,
            symbol=str(params.get("symbol", "")),
            side=str(params.get("side", "")).upper(),
            order_type=str(params.get("orderType", "")).upper(),
            quantity=str(params.get("qty", "")),
            reduce_only=reduce_only,
            client_order_id=optional(params, "orderLinkId"),
            position_side=position_side,
            # qty: "Perps & Futures: if you pass qty="0" and specify reduceOnly=true&closeOnTrigger=true, you
            # can close the position up to maxMktOrderQty or maxOrderQty" (docs/v5/order/create-order.mdx);
            # the way to close a remainder below minOrderQty.
            close_position=reduce_only and parse_bool(params.get("closeOnTrigger")) and _is_zero(params.get("qty")),
        )
        rules = VenueRules(
            min_notional=lambda market: market.bybit_min_notional,
            # Bybit help center, Derivatives Trading Rules, "3. Minimum Notional Value/Order Size": "Closing
            # orders are exempt from notional value but still adhere to minimum size"
            # (https://www.bybit.com/en/help-center/article/Derivatives-Trading-RulesDerivatives_RIsk_Management,
            # the note as quoted at https://www.mlmrehab.com/16743.html). Both are settings.
            closing_exempt_from_min_notional=settings.bybit_reduce_only_min_notional_exempt,
            closing_exempt_from_min_qty=settings.bybit_reduce_only_min_qty_exempt,
            # orderLinkId: "Futures, Perps & Spot ... always unique" (docs/v5/order/create-order.mdx).
            client_id_unique_forever=True,
        )
        try:
            problem = _unsupported_order_setting(params) or idx_problem
            if problem is not None:
                self._core.reject_order(request, RejectReason.BAD_PARAMETER, problem, self.reject_code)
            order = self._core.place_order(request, self.reject_code, rules)
        except OrderRejected as exc:
            code, msg = self._rejection(exc.reason, position_flat=exc.position_flat)
            if exc.reason in (RejectReason.BAD_PARAMETER, RejectReason.QTY_PRECISION, RejectReason.QTY_TOO_LARGE):
                msg = f"params error: {exc.detail}"
            raise ApiError(code, msg) from exc
        return {"orderId": str(order.id), "orderLinkId": order.client_order_id or ""}

    def _cancel_order(self, params: Params, account: Account) -> Result:
        """Every order is filled on arrival, so there is never anything to cancel."""
        _require_linear(params)
        self._matching_orders(params, account.orders.values())
        raise ApiError(110001, "order not exists or too late to cancel")

    def _realtime_cache(self, account: Account) -> list[Order]:
        """The closed orders /v5/order/realtime still knows: "querying filled, canceled, and rejected orders to
        the most recent 500 orders for spot, linear, and option"; "After a server release or restart, filled,
        canceled, and rejected orders of Unified account should only be queried through order history"
        (docs/v5/order/open-order.mdx). Newest first; the cap is the bybit_realtime_closed_cap setting, the
        restart the control call forget_realtime_orders."""
        closed = sorted((o for o in account.orders.values() if o.id > account.realtime_floor), key=lambda o: -o.id)
        return closed[: self._core.settings.bybit_realtime_closed_cap]

    def _realtime_orders(self, params: Params, account: Account) -> Result:
        """Orders named by ``orderId``/``orderLinkId`` (open ones, or recent closed ones), else the open ones
        (``openOnly`` 0, the default; never any) or the recent closed ones (``openOnly`` 1).

        An empty ``orderId`` counts as absent: ccxt sends ``orderId=`` when looking up by ``orderLinkId``.
        """
        if not _is_linear(params):
            return _order_page(params, [], default_limit=20)
        named = optional(params, "orderId") is not None or optional(params, "orderLinkId") is not None
        if named or optional_int(params, "openOnly") in (1, 2):
            orders = self._matching_orders(params, self._realtime_cache(account))
        else:
            self._matching_orders(params, [])  # validates the symbol
            orders = []
        return _order_page(params, orders, default_limit=20)

    def _order_history(self, params: Params, account: Account) -> Result:
        """Get Order History (docs/v5/order/order-list.mdx).

        "As order creation/cancellation is asynchronous, the data returned from this endpoint may delay":
        an order shows bybit_history_delay_ms after its last update. The docs give no figure; the default
        500 ms is small enough for a reader that polls for a couple of seconds (ccxt-style) to see it, and
        not 0 so that code reading history right after an order meets the asynchrony.
        "The orders in the last 7 days: supports querying all statuses; The orders beyond 7 days: supports
        querying filled orders"; ``startTime``/``endTime``: "must be passed together", "If not passed, query
        the past 7 days data by default", at most 7 days apart. ``orderStatus``: "return all status orders if
        not passed".
        """
        start, end = optional_int(params, "startTime"), optional_int(params, "endTime")
        if (start is None) != (end is None):
            raise ApiError(PARAMS_ERROR, "params error: startTime and endTime must be passed together")
        now = self._core.now_ms()
        try:
            start, end = lookup_window(start, end, now)
        except WindowError as exc:
            raise ApiError(PARAMS_ERROR, _window_message(exc)) from None
        statuses = optional(params, "orderStatus")
        wanted = None if statuses is None else set(statuses.split(","))
        delay = self._core.settings.bybit_history_delay_ms
        orders = [
            o
            for o in self._matching_orders(params, account.orders.values())
            if (wanted is None or _STATUSES[o.status] in wanted)
            and o.updated_ms + delay <= now
            and in_window(o.created_ms, start, end)
            and (o.executed_qty > 0 or o.created_ms >= now - WEEK_MS)
        ]
        return _order_page(params, orders if _is_linear(params) else [], default_limit=20)

    def _matching_orders(self, params: Params, orders: Iterable[Order]) -> list[Order]:
        """``orders`` filtered by the optional ``symbol``, ``orderId`` and ``orderLinkId``."""
        symbol = optional(params, "symbol")
        if symbol is not None:
            self._core.market(symbol)
        order_id, link_id = optional(params, "orderId"), optional(params, "orderLinkId")
        return [
            o
            for o in orders
            if symbol in (None, o.symbol) and order_id in (None, str(o.id)) and link_id in (None, o.client_order_id)
        ]

    def _executions(self, params: Params, account: Account) -> Result:
        """Get Trade History (docs/v5/order/execution.mdx), newest first: at most 7 days ("startTime and endTime
        are not passed, return 7 days by default; Only startTime is passed, return range between startTime
        and startTime+7 days; Only endTime is passed, return range between endTime-7 days and endTime; If
        both are passed, the rule is endTime - startTime <= 7 days") and the ``execType`` filter ccxt sends
        (``Trade``: liquidations are ``BustTrade``, ADL ``AdlTrade``, docs/v5/enum.mdx)."""
        try:
            start, end = lookup_window(
                optional_int(params, "startTime"), optional_int(params, "endTime"), self._core.now_ms()
            )
        except WindowError as exc:
            raise ApiError(PARAMS_ERROR, _window_message(exc)) from None
        exec_type = optional(params, "execType")
        orders = {o.id: o for o in self._matching_orders(params, account.orders.values())} if _is_linear(params) else {}
        trades = [
            t
            for t in reversed(account.trades)
            if t.order_id in orders
            and in_window(t.time_ms, start, end)
            and exec_type in (None, _EXEC_TYPES[orders[t.order_id].source])
        ]
        rows = [execution_json(t, orders[t.order_id]) for t in trades[: limit_param(params, 50, 100)]]
        return {"category": _category(params), "list": rows, "nextPageCursor": ""}


def _page(
    rows: Iterable[T], key: Callable[[T], PageKey], params: Params, *, default: int, maximum: int
) -> tuple[list[T], str]:
    """One page of ``rows`` in ``key`` order: the first ``limit`` rows after the ``cursor``, and the cursor of the
    next page, "" on the last page as in the docs' response example (docs/v5/position/position.mdx) and in a real
    empty settleCoin answer (quoted in ccxt/ccxt#19441). A recorded real answer to a ``symbol`` query carries a
    cursor on its only page (tests/conformance/fixtures/bybit/position_list_open.json): a client must also end
    on an empty page, which the simulator answers with "" when asked past the last row.

    The cursor names the last row returned, percent-encoded like the real tokens (``LTCUSDT%2C1699948800031%2C0``
    in that recorded answer); the next page starts after it, so rows opened or closed between two requests
    neither repeat nor push others off the list. The docs do not say how a malformed cursor or a bad ``limit`` is
    refused: both get the usual 10001 params error.
    """
    limit = page_limit(params, default, maximum)
    after = _cursor_key(optional(params, "cursor"))
    remaining = [row for row in sorted(rows, key=key) if after is None or key(row) > after]
    page = remaining[:limit]
    return page, _cursor_token(key(page[-1])) if len(remaining) > limit else ""


def _cursor_token(key: PageKey) -> str:
    return quote(f"{key[0]},{key[1]}", safe="")


def _cursor_key(token: str | None) -> PageKey | None:
    if token is None:
        return None
    symbol, _, number = unquote(token).rpartition(",")
    if not symbol or not number.isdigit():
        raise BadParameter(f"cursor {token!r} is invalid")
    return symbol, int(number)


def _position_key(position: Position) -> PageKey:
    return position.symbol, _POSITION_IDX[position.side]


def _is_zero(raw: object) -> bool:
    try:
        return Decimal(str(raw)) == 0
    except ArithmeticError:
        return False


def _window_message(exc: WindowError) -> str:
    return _TOO_WIDE if exc.kind == "too_wide" else "params error: startTime must be less than endTime"


def _category(params: Params) -> str:
    return optional(params, "category") or ""


def _is_linear(params: Params) -> bool:
    return _category(params) == "linear"


def _require_linear(params: Params) -> None:
    if not _is_linear(params):
        raise BadParameter(f"category {_category(params)!r} is not supported, only linear")


def _unsupported_order_setting(params: Params) -> str | None:
    """Why an order's category cannot be served (linear only), if so."""
    if not _is_linear(params):
        return f"category {_category(params)!r} is not supported, only linear"
    return None


def _position_idx(raw: object) -> tuple[PositionSide | None, str | None]:
    """``positionIdx`` as a position side (absent: None), or why it is invalid."""
    if raw is None or raw == "":
        return None, None
    by_idx = {str(idx): side for side, idx in _POSITION_IDX.items()}
    side = by_idx.get(str(raw))
    return (side, None) if side is not None else (None, f"positionIdx {raw!r} is not 0, 1 or 2")


def _leverage(params: Params, name: str) -> Decimal:
    leverage = decimal_param(params, name)
    if not 1 <= leverage <= MAX_LEVERAGE:
        raise BadParameter(f"{name} must be between 1 and {MAX_LEVERAGE}")
    return leverage


def _realized(trades: Iterable[Trade]) -> Decimal:
    """Realized PnL net of fees over some trades."""
    return sum((t.realized_pnl - t.fee for t in trades), Decimal(0))


def _realized_by_symbol(trades: Iterable[Trade]) -> dict[str, Decimal]:
    """Realized PnL net of fees per symbol, in one pass over the trades."""
    out: dict[str, Decimal] = {}
    for t in trades:
        out[t.symbol] = out.get(t.symbol, Decimal(0)) + t.realized_pnl - t.fee
    return out


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
            "minNotionalValue": fmt(market.bybit_min_notional),
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
        "list": [order_json(o) for o in newest_first],
        "nextPageCursor": "",
    }


def order_json(order: Order) -> dict[str, Any]:
    filled = order.executed_qty > 0
    return {
        "orderId": str(order.id),
        "orderLinkId": order.client_order_id or "",
        "blockTradeId": "",
        "symbol": order.symbol,
        "price": "0",
        "qty": fmt(order.quantity),
        "side": _SIDES[order.side],
        "isLeverage": "",
        "positionIdx": _POSITION_IDX[order.position_side],
        "orderStatus": _STATUSES[order.status],
        "cancelType": "UNKNOWN",
        "rejectReason": "EC_NoError",
        # avgPrice: "UTA: returns "" for those orders without avg price" (docs/v5/order/open-order.mdx)
        "avgPrice": fmt(order.avg_price) if filled else "",
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
        "createType": _CREATE_TYPES[order.source],
        "createdTime": str(order.created_ms),
        "updatedTime": str(order.updated_ms),
    }


def execution_json(trade: Trade, order: Order) -> dict[str, Any]:
    return {
        "symbol": trade.symbol,
        "orderId": str(trade.order_id),
        "orderLinkId": order.client_order_id or "",
        "side": _SIDES[trade.side],
        "orderPrice": "0",
        "orderQty": fmt(order.quantity),
        "leavesQty": "0",
        "createType": _CREATE_TYPES[order.source],
        "orderType": "Market",
        "stopOrderType": "",
        "execFee": fmt(trade.fee),
        "execId": f"{trade.id:08d}-sim",
        "execPrice": fmt(trade.price),
        "execQty": fmt(trade.quantity),
        "execType": _EXEC_TYPES[order.source],
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
