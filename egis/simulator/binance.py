"""Binance USD-M futures front end of the simulator: the /fapi REST endpoints ccxt's binanceusdm uses.

Sources (quoted per behaviour below): the USD-M docs at https://developers.binance.com/docs/derivatives/
usds-margined-futures/ (mirrored as markdown in rosssaunders/coincise docs/binance/usdm/...), and real
answers quoted in public issues.

Authentication: header ``X-MBX-APIKEY`` names a key registered with the simulator (unknown: -2015);
SIGNED (TRADE/USER_DATA) endpoints need ``timestamp`` within ``recvWindow`` of the server clock (-1021)
and ``signature`` = HMAC-SHA256 of the query string concatenated with the body (-1022). GET and DELETE
parameters arrive in the query string, POST parameters as a form body. Errors are ``{"code", "msg"}``
with HTTP 400 unless stated otherwise. Every answer carries ``X-MBX-USED-WEIGHT-1M``; order answers
``X-MBX-ORDER-COUNT-10S`` and ``-1M``.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, TypeVar

from aiohttp import web

from egis.simulator.core import (
    DAY_MS,
    MAX_BINANCE_BAN_SECONDS,
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
    SimulatorCore,
    Trade,
    UnknownSymbol,
    VenueRules,
)
from egis.simulator.limits import MINUTE_MS, Verdict
from egis.simulator.markets import MarketSpec
from egis.simulator.streams import BINANCE as STREAM_VENUE
from egis.simulator.streams import StreamHub
from egis.simulator.wire import (
    ApiError,
    BadParameter,
    FrontEnd,
    Params,
    Payload,
    PrivateHandler,
    PublicHandler,
    WindowError,
    client_ip,
    fmt,
    hmac_sha256_hex,
    in_window,
    limit_param,
    lookup_window,
    optional,
    optional_int,
    params_of,
    parse_bool,
    raw_of,
    required,
)

VENUE = "binanceusdm"
MAX_LEVERAGE = 125
_MAX_NOTIONAL = "1000000"
_DELIVERY_DATE_PERPETUAL = 4133404800000
ORDER_PATH = "/fapi/v1/order"
LISTEN_KEY_PATH = "/fapi/v1/listenKey"
# "If recvWindow is not sent, it defaults to 5000" (General Info > Timing Security); it cannot exceed 60000.
DEFAULT_RECV_WINDOW = 5000
MAX_RECV_WINDOW = 60000
# Query Order / All Orders: "These orders will not be found: order status is CANCELED or EXPIRED AND
# order has NO filled trade AND created time + 3 days < current time; order create time + 90 days <
# current time" (https://developers.binance.com/docs/derivatives/usds-margined-futures/trade/rest-api/
# Query-Order).
ORDER_HORIZON_MS = 90 * DAY_MS
UNFILLED_ORDER_HORIZON_MS = 3 * DAY_MS
# Account Trade List: "Only support querying trade in the past 6 months" (.../trade/rest-api/Account-Trade-List).
TRADE_HORIZON_MS = 180 * DAY_MS

_REJECTIONS: dict[RejectReason, tuple[int, str]] = {
    RejectReason.UNKNOWN_SYMBOL: (-1121, "Invalid symbol."),
    RejectReason.BAD_PARAMETER: (-1102, "Mandatory parameter was not sent, was empty/null, or malformed."),
    RejectReason.UNSUPPORTED_ORDER_TYPE: (-1116, "Invalid orderType."),
    RejectReason.QTY_PRECISION: (-1111, "Precision is over the maximum defined for this asset."),
    RejectReason.QTY_TOO_SMALL: (-4003, "Quantity less than or equal to zero."),
    RejectReason.QTY_TOO_LARGE: (-4005, "Quantity greater than max quantity."),
    # -4164 MIN_NOTIONAL "Order's notional must be no smaller than %s (unless you choose reduce only)"
    # (USD-M error codes; real answer quoted in conor19w/Binance-Futures-Trading-Bot#52). The message
    # is completed with the market's minimum in _new_order.
    RejectReason.NOTIONAL_TOO_SMALL: (
        -4164,
        "Order's notional must be no smaller than {} (unless you choose reduce only).",
    ),
    RejectReason.DUPLICATE_CLIENT_ORDER_ID: (-4116, "ClientOrderId is duplicated."),
    # -4061 POSITION_SIDE_NOT_MATCH (USD-M error codes): positionSide must be BOTH (one-way) or LONG/SHORT
    # (hedge mode: "It must be sent in Hedge Mode", New Order docs).
    RejectReason.POSITION_SIDE_MISMATCH: (-4061, "Order's position side does not match user's setting."),
    RejectReason.REDUCE_ONLY_REJECTED: (-2022, "ReduceOnly Order is rejected."),
    RejectReason.INSUFFICIENT_MARGIN: (-2019, "Margin is insufficient."),
}

_RATE_LIMITS = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
    {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
]

# Request weight per endpoint, from each endpoint's "Request Weight" in the USD-M docs: an int, or
# (with symbol, without symbol). New Order weighs 0 on the IP limit and 1 on the order counts.
_WEIGHTS: dict[tuple[str, str], int | tuple[int, int]] = {
    ("GET", "/fapi/v1/exchangeInfo"): 1,
    ("GET", "/fapi/v1/time"): 1,
    ("GET", "/fapi/v1/ticker/24hr"): (1, 40),
    ("GET", "/fapi/v1/ticker/price"): (1, 2),
    ("GET", "/fapi/v2/ticker/price"): (1, 2),
    ("GET", "/fapi/v1/premiumIndex"): (1, 10),
    ("GET", "/fapi/v2/account"): 5,
    ("GET", "/fapi/v3/account"): 5,
    ("GET", "/fapi/v1/leverageBracket"): 1,
    ("GET", "/fapi/v2/positionRisk"): 5,
    ("GET", "/fapi/v3/positionRisk"): 5,
    ("POST", ORDER_PATH): 0,
    ("GET", ORDER_PATH): 1,
    ("DELETE", ORDER_PATH): 1,
    ("GET", "/fapi/v1/openOrders"): (1, 40),
    ("GET", "/fapi/v1/allOrders"): 5,
    ("GET", "/fapi/v1/userTrades"): 5,
    ("GET", "/fapi/v1/forceOrders"): (20, 50),
    ("POST", "/fapi/v1/leverage"): 1,
    ("POST", "/fapi/v1/listenKey"): 1,
    ("PUT", "/fapi/v1/listenKey"): 1,
    ("DELETE", "/fapi/v1/listenKey"): 1,
    ("GET", "/fapi/v1/positionSide/dual"): 30,
    ("POST", "/fapi/v1/positionSide/dual"): 1,
}

_Item = TypeVar("_Item")


def reject_code(reason: RejectReason) -> int:
    """The Binance error code answering a rejected order."""
    return _REJECTIONS[reason][0]


class BinanceFrontEnd(FrontEnd):
    """Serves the Binance USD-M futures REST protocol (USDT margin, one-way or hedge mode) from a SimulatorCore."""

    path_prefix = "/fapi/"
    api_key_header = "X-MBX-APIKEY"

    def __init__(self, core: SimulatorCore, hub: StreamHub | None = None) -> None:
        super().__init__(core)
        self._hub = hub if hub is not None else StreamHub(core)

    def error_response(self, code: int, msg: str, http_status: int | None = None) -> web.Response:
        """A Binance error answer (HTTP 400 unless given)."""
        return web.json_response({"code": code, "msg": msg}, status=http_status or 400)

    # ------------------------------------------------------------------ rate limits

    def admit(self, request: web.Request, api_key: str | None) -> web.Response | None:
        """Weight per IP per minute (429 -1003, then 418 bans for clients that do not back off) and the
        order counts per account (429 -1015); see egis.simulator.limits for the sources."""
        settings, now, ip = self._core.settings, self._core.now_ms(), client_ip(request)
        weight = self._weight(request.method, request.path, params_of(request))
        verdict = self._core.binance_limits.admit(
            ip, weight, now, settings.binance_weight_limit, settings.binance_ban_seconds, MAX_BINANCE_BAN_SECONDS
        )
        if verdict.kind != "ok":
            return self._limit_answer(ip, verdict)
        if (request.method, request.path) == ("POST", ORDER_PATH) and api_key:
            exceeded = self._core.binance_limits.count_order(
                api_key, now, settings.binance_order_limit_10s, settings.binance_order_limit_1m
            )
            if exceeded is not None:
                # -1015 TOO_MANY_ORDERS "Too many new orders; current limit is %s orders per %s." (error codes)
                interval, limit = exceeded
                length = MINUTE_MS if interval == "1 MINUTE" else 10_000
                retry = length - now % length
                response = self.error_response(
                    -1015, f"Too many new orders; current limit is {limit} orders per {interval}.", 429
                )
                response.headers["Retry-After"] = str(max(1, -(-retry // 1000)))
                return response
        return None

    def decorate(self, request: web.Request, response: web.StreamResponse, api_key: str | None) -> None:
        """``X-MBX-USED-WEIGHT-1M`` on every answer, the order counts on order answers (General Info > LIMITS)."""
        now = self._core.now_ms()
        response.headers["X-MBX-USED-WEIGHT-1M"] = str(self._core.binance_limits.used_weight(client_ip(request), now))
        if request.path == ORDER_PATH and api_key:
            count_10s, count_1m = self._core.binance_limits.order_counts(api_key, now)
            response.headers["X-MBX-ORDER-COUNT-10S"] = str(count_10s)
            response.headers["X-MBX-ORDER-COUNT-1M"] = str(count_1m)

    def rate_limit_response(self, request: web.Request) -> web.Response:
        """Binance's answer over the request-weight limit: HTTP 429 with code -1003 (no back-off is recorded)."""
        now = self._core.now_ms()
        verdict = Verdict("rate_limited", max(1, (MINUTE_MS - now % MINUTE_MS) // 1000))
        return self._limit_answer(client_ip(request), verdict)

    def ban_response(self, request: web.Request, seconds: float) -> web.Response:
        """A 429 after which the client must back off ``seconds``: calling again sooner gets the IP banned (418)."""
        ip = client_ip(request)
        return self._limit_answer(ip, self._core.binance_limits.force_backoff(ip, self._core.now_ms(), seconds))

    def _limit_answer(self, ip: str, verdict: Verdict) -> web.Response:
        if verdict.kind == "banned":
            # HTTP 418 with -1003 "Way too many requests; IP banned until <ms>. Please use the websocket for
            # live updates to avoid bans." (real answers quoted in ccxt/binance-api-node#106).
            response = self.error_response(
                -1003,
                f"Way too many requests; IP({ip}) banned until {verdict.until_ms}. "
                "Please use the websocket for live updates to avoid bans.",
                418,
            )
        else:
            # HTTP 429 with -1003 TOO_MANY_REQUESTS (error codes: "Too many requests; current limit is %s
            # requests per minute. Please use the websocket for live updates to avoid polling the API.").
            limit = self._core.settings.binance_weight_limit
            response = self.error_response(
                -1003,
                f"Too many requests; current limit of IP({ip}) is {limit} requests per minute. "
                "Please use the websocket for live updates to avoid polling the API.",
                429,
            )
        response.headers["Retry-After"] = str(verdict.retry_after)
        return response

    def _weight(self, method: str, path: str, params: Params) -> int:
        weight = _WEIGHTS.get((method, path), 1)
        if isinstance(weight, tuple):
            return weight[0] if optional(params, "symbol") else weight[1]
        return weight

    # ------------------------------------------------------------------ plumbing

    def _public_endpoints(self) -> dict[tuple[str, str], PublicHandler]:
        return {
            ("GET", "/fapi/v1/exchangeInfo"): self._exchange_info,
            ("GET", "/fapi/v1/time"): lambda _: {"serverTime": self._core.now_ms()},
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
            ("POST", ORDER_PATH): self._new_order,
            ("GET", ORDER_PATH): self._query_order,
            ("DELETE", ORDER_PATH): self._cancel_order,
            ("GET", "/fapi/v1/openOrders"): self._open_orders,
            ("GET", "/fapi/v1/allOrders"): self._all_orders,
            ("GET", "/fapi/v1/userTrades"): self._user_trades,
            ("GET", "/fapi/v1/forceOrders"): self._force_orders,
            ("POST", "/fapi/v1/leverage"): self._set_leverage,
            ("GET", "/fapi/v1/positionSide/dual"): lambda _, a: {"dualSidePosition": a.hedge_default},
            ("POST", "/fapi/v1/positionSide/dual"): self._set_position_mode,
            ("POST", LISTEN_KEY_PATH): self._start_user_stream,
            ("PUT", LISTEN_KEY_PATH): self._keepalive_user_stream,
            ("DELETE", LISTEN_KEY_PATH): self._close_user_stream,
        }

    def _key_only_endpoints(self) -> frozenset[tuple[str, str]]:
        # The user data stream endpoints are USER_STREAM: API key, no signature (General Info > Endpoint
        # Security Type).
        return frozenset({("POST", LISTEN_KEY_PATH), ("PUT", LISTEN_KEY_PATH), ("DELETE", LISTEN_KEY_PATH)})

    def _success_response(self, payload: Payload) -> web.Response:
        return web.json_response(payload)

    def _authenticate(self, request: web.Request, api_key: str | None, *, signed: bool) -> Account:
        if not api_key:
            raise ApiError(-2014, "API-key format invalid.", 401)
        secret = self._secret(api_key)
        if secret is None:  # -2015 REJECTED_MBX_KEY (error codes), HTTP 401
            raise ApiError(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        if signed and self._core.settings.check_signatures:
            self._check_signed(request, secret)
        return self._core.account(api_key)

    def _check_signed(self, request: web.Request, secret: str) -> None:
        """Timing and signature of a SIGNED request (General Info > Timing Security, SIGNED Endpoint Security):
        ``if (timestamp < serverTime + 1000 && serverTime - timestamp <= recvWindow)`` process, else -1021;
        signature = HMAC-SHA256(secret, totalParams) where totalParams is the query string concatenated with
        the request body; the signature is not case sensitive; else -1022."""
        params = params_of(request)
        try:
            timestamp = optional_int(params, "timestamp")
            recv_window = optional_int(params, "recvWindow") or DEFAULT_RECV_WINDOW
        except BadParameter as exc:
            raise ApiError(-1102, str(exc)) from None
        if timestamp is None:
            raise ApiError(-1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.")
        if not 0 < recv_window <= MAX_RECV_WINDOW:
            raise ApiError(-1130, "Data sent for parameter 'recvWindow' is not valid.")
        now = self._core.now_ms()
        if timestamp >= now + 1000:
            raise ApiError(-1021, "Timestamp for this request was 1000ms ahead of the server's time.")
        if now - timestamp > recv_window:
            raise ApiError(-1021, "Timestamp for this request is outside of the recvWindow.")
        signature = optional(params, "signature")
        if signature is None:
            raise ApiError(-1102, "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.")
        raw_query, raw_body = raw_of(request)
        expected = hmac_sha256_hex(secret, _without_signature(raw_query) + _without_signature(raw_body))
        if not hmac.compare_digest(signature.lower(), expected):
            raise ApiError(-1022, "Signature for this request is not valid.")

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
            "serverTime": self._core.now_ms(),
            "futuresType": "U_MARGINED",
            "rateLimits": _RATE_LIMITS,
            "exchangeFilters": [],
            "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
            "symbols": [_symbol_info(market) for market in self._core.markets.values()],
        }

    def _ticker_24hr(self, market: MarketSpec) -> dict[str, Any]:
        price = fmt(self._core.mark_prices[market.symbol])
        now = self._core.now_ms()
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
            "time": self._core.now_ms(),
        }

    def _premium_index(self, market: MarketSpec) -> dict[str, Any]:
        price = fmt(self._core.mark_prices[market.symbol])
        now = self._core.now_ms()
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
            "updateTime": self._core.now_ms(),
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
        """Version 2 lists every symbol (flat ones too: one BOTH row, or LONG and SHORT rows in hedge mode,
        Position-Information-V2 examples); version 3 only open positions (Position-Information-V3)."""
        if version == 2:
            return [p for symbol in self._core.markets for p in account.symbol_positions(symbol)]
        return account.open_positions()

    def _position_risk(self, params: Params, account: Account, *, version: int) -> Payload:
        symbol = optional(params, "symbol")
        if symbol is None:
            positions = self._account_positions(account, version)
        else:  # the symbol's rows alone (a close reads one symbol: not every position, filtered)
            market = self._core.market(symbol).symbol
            positions = [p for p in account.symbol_positions(market) if version == 2 or p.quantity]
        return [self._position_row(account, p, version) for p in positions]

    def _position_row(self, account: Account, position: Position, version: int) -> dict[str, Any]:
        mark = self._core.mark_prices[position.symbol]
        leverage = account.leverage_for(position.symbol)
        notional = position.notional(mark)
        row: dict[str, Any] = {
            "symbol": position.symbol,
            "positionSide": position.side.value,
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

    def _set_position_mode(self, params: Params, account: Account) -> Payload:
        """Change Position Mode: hedge or one-way "on EVERY symbol"; -4059 when nothing changes, -4068 with a
        position open (.../trade/rest-api/Change-Position-Mode; error codes -4059, -4068)."""
        hedge = parse_bool(required(params, "dualSidePosition"))
        if account.hedge_default == hedge and all(account.is_hedge(s) == hedge for s in self._core.markets):
            raise ApiError(-4059, "No need to change position side.")
        if account.open_positions():
            raise ApiError(-4068, "Position side cannot be changed if there exists position.")
        self._core.set_position_mode(account.api_key, hedge)
        return {"code": 200, "msg": "success"}

    # ------------------------------------------------------------------ orders and trades

    def _new_order(self, params: Params, account: Account) -> Payload:
        symbol = str(params.get("symbol", ""))
        raw_side = optional(params, "positionSide")
        request = OrderRequest(
            api_key=account.api_key,
            venue=VENUE,
            symbol=symbol,
            side=str(params.get("side", "")).upper(),
            order_type=str(params.get("type", "")).upper(),
            quantity=str(params.get("quantity", "")),
            reduce_only=parse_bool(params.get("reduceOnly")),
            client_order_id=optional(params, "newClientOrderId") or f"sim-{secrets.token_hex(8)}",
            position_side=_position_side_param(raw_side),
        )
        settings = self._core.settings
        rules = VenueRules(
            # MIN_NOTIONAL: "unless you choose reduce only" (-4164); closing hedge orders (LONG+SELL,
            # SHORT+BUY) reduce exposure the same way (General Info, -1008 exemption list).
            min_notional=lambda market: market.binance_min_notional,
            closing_exempt_from_min_notional=True,
            # The simulator has always let reduce-only orders below minQty close a remainder; whether Binance
            # does could not be confirmed (the docs exempt reduce-only from MIN_NOTIONAL only).
            closing_exempt_from_min_qty=True,
            # newClientOrderId: "A unique id among open orders" (New Order docs). Market orders fill at once,
            # so reusing the id of a filled order is accepted as a NEW order; the setting restores refusal.
            client_id_unique_forever=settings.binance_reject_reused_client_id,
        )
        problem = self._protocol_problem(params, account, symbol, raw_side)
        try:
            if problem is not None:
                reason, code, msg = problem
                self._core.reject_order(request, reason, msg, lambda _: code)
            order = self._core.place_order(request, reject_code, rules)
        except OrderRejected as exc:
            if problem is not None:
                raise ApiError(problem[1], problem[2]) from exc
            code, msg = _REJECTIONS[exc.reason]
            if exc.reason is RejectReason.BAD_PARAMETER:
                msg = exc.detail
            elif exc.reason is RejectReason.NOTIONAL_TOO_SMALL:
                msg = msg.format(fmt(self._core.market(symbol).binance_min_notional))
            raise ApiError(code, msg) from exc
        # newOrderRespType "ACK", "RESULT", default "ACK"; with RESULT "MARKET order: the final FILLED
        # result of the order will be return directly" (New Order docs). ccxt 4.5.90 always sends RESULT
        # for swaps (binance.py create_order_request: request['newOrderRespType'] = 'RESULT'), so the
        # answer is FILLED unless the client asks for ACK or the binance_market_new_answer setting (an
        # older observed NEW/executedQty 0 answer) is on; the fill shows on the next query either way.
        response_type = (optional(params, "newOrderRespType") or "ACK").upper()
        acknowledged_only = response_type == "ACK" or settings.binance_market_new_answer
        return _order_json(order, acknowledged_only=acknowledged_only)

    def _protocol_problem(
        self, params: Params, account: Account, symbol: str, raw_side: str | None
    ) -> tuple[RejectReason, int, str] | None:
        """A request the venue refuses before matching: an unknown positionSide value, or reduceOnly in
        hedge mode (reduceOnly "Cannot be sent in Hedge Mode", New Order docs; -1106 PARAM_NOT_REQUIRED)."""
        if raw_side is not None and _position_side_param(raw_side) is None:
            return RejectReason.POSITION_SIDE_MISMATCH, *_REJECTIONS[RejectReason.POSITION_SIDE_MISMATCH]
        if account.is_hedge(symbol) and "reduceOnly" in params:
            return RejectReason.BAD_PARAMETER, -1106, "Parameter 'reduceOnly' sent when not required."
        return None

    def _visible(self, order: Order) -> bool:
        """Whether Query Order / All Orders still find the order (see ORDER_HORIZON_MS)."""
        age = self._core.now_ms() - order.created_ms
        unfilled_done = order.status in (OrderStatus.CANCELED, OrderStatus.EXPIRED) and not order.executed_qty
        return age <= ORDER_HORIZON_MS and not (unfilled_done and age > UNFILLED_ORDER_HORIZON_MS)

    def _lookup_order(self, params: Params, account: Account) -> Order | None:
        """The order named by ``symbol`` and ``orderId`` or ``origClientOrderId`` (the latter wins).

        A client id reused after its order closed names several orders: the most recent is answered
        (the venue's choice is undocumented; the most recent is the only one that can still be open).
        """
        symbol = self._core.market(required(params, "symbol")).symbol
        wanted_id = optional(params, "origClientOrderId")
        order_id = optional_int(params, "orderId")
        if wanted_id is not None:
            matches = [
                o
                for o in account.orders.values()
                if o.symbol == symbol and client_order_id(o) == wanted_id and self._visible(o)
            ]
            return max(matches, key=lambda o: o.id, default=None)
        if order_id is None:
            raise BadParameter("Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        order = account.order_by_id(symbol, order_id)
        return order if order is not None and self._visible(order) else None

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

    def _window(self, params: Params) -> tuple[int, int]:
        """The searched window of a 7-day-limited history query.

        Account Trade List: "If startTime and endTime are both not sent, then the last 7 days' data will be
        returned. The time between startTime and endTime cannot be longer than 7 days." Over 7 days the
        venue answers -4165 "Maximum time interval is 7 days." and a startTime alone is clamped to
        [startTime, startTime + 7 days] (both measured live and quoted in public code, e.g. a ccxt-based
        history sync: "APIError(code=-4165): Maximum time interval is 7 days."); ccxt itself adds
        endTime = since + 7 days when since is over a week old (ccxt binance.py fetch_my_trades).
        All Orders: "The query time period must be less then 7 days (default as the recent 7 days)".
        """
        start, end = optional_int(params, "startTime"), optional_int(params, "endTime")
        try:
            return lookup_window(start, end, self._core.now_ms())
        except WindowError as exc:
            if exc.kind == "inverted":  # -1023 START_TIME_GREATER_THAN_END_TIME (error codes)
                raise ApiError(-1023, "Start time is greater than end time.") from None
            raise ApiError(-4165, "Maximum time interval is 7 days.") from None

    def _all_orders(self, params: Params, account: Account) -> Payload:
        symbol = self._core.market(required(params, "symbol")).symbol
        from_id = optional_int(params, "orderId")
        timed = optional(params, "startTime") is not None or optional(params, "endTime") is not None
        start, end = (None, None) if from_id is not None and not timed else self._window(params)
        orders = [
            o
            for o in sorted(account.orders.values(), key=lambda o: o.id)
            if o.symbol == symbol
            and self._visible(o)
            and (from_id is None or o.id >= from_id)
            and in_window(o.created_ms, start, end)
        ]
        page = _page(orders, limit_param(params, 500, 1000), oldest_first=from_id is not None or timed)
        return [_order_json(o) for o in page]

    def _user_trades(self, params: Params, account: Account) -> Payload:
        symbol = self._core.market(required(params, "symbol")).symbol
        from_id = optional_int(params, "fromId")
        order_id = optional_int(params, "orderId")
        timed = optional(params, "startTime") is not None or optional(params, "endTime") is not None
        if from_id is not None and timed:
            # "The parameter fromId cannot be sent with startTime or endTime" (Account Trade List);
            # -1128 OPTIONAL_PARAMS_BAD_COMBO (error codes).
            raise ApiError(-1128, "Combination of optional parameters invalid.")
        start, end = (None, None) if from_id is not None else self._window(params)
        horizon = self._core.now_ms() - TRADE_HORIZON_MS
        trades = [
            t
            for t in account.trades
            if t.symbol == symbol
            and t.time_ms >= horizon
            and (from_id is None or t.id >= from_id)
            and order_id in (None, t.order_id)
            and in_window(t.time_ms, start, end)
        ]
        page = _page(trades, limit_param(params, 500, 1000), oldest_first=from_id is not None or timed)
        return [_trade_json(t) for t in page]

    def _force_orders(self, params: Params, account: Account) -> Payload:
        """User's Force Orders: liquidation ("autoclose-...") and ADL ("adl_autoclose") orders; "If startTime
        is not sent, data within 7 days before endTime can be queried" (.../trade/rest-api/Users-Force-Orders)."""
        symbol = optional(params, "symbol")
        if symbol is not None:
            self._core.market(symbol)
        kinds = {"LIQUIDATION": {OrderSource.LIQUIDATION}, "ADL": {OrderSource.ADL}}
        wanted = kinds.get(optional(params, "autoCloseType") or "", {OrderSource.LIQUIDATION, OrderSource.ADL})
        start, end = self._window(params)
        orders = [
            o
            for o in sorted(account.orders.values(), key=lambda o: o.id)
            if o.source in wanted and symbol in (None, o.symbol) and in_window(o.created_ms, start, end)
        ]
        return [_order_json(o) for o in orders[-limit_param(params, 50, 100) :]]

    # ------------------------------------------------------------------ user data stream (listen keys)

    def _start_user_stream(self, _: Params, account: Account) -> Payload:
        """Start User Data Stream: "Start a new user data stream. The stream will close after 60 minutes unless
        a keepalive is sent. If the account has an active listenKey, that listenKey will be returned and its
        validity will be extended for 60 minutes." Response ``{"listenKey": ...}`` (USD-M docs, User Data
        Streams > Start User Data Stream). The control API's ``refuse_stream_auth`` makes it answer -2015
        (REJECTED_MBX_KEY, HTTP 401, the answer to a key without the permission; error codes)."""
        if self._hub.take_auth_refusal(STREAM_VENUE, account.api_key):
            raise ApiError(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        return {"listenKey": self._hub.listen_keys.start(account.api_key).key}

    def _keepalive_user_stream(self, _: Params, account: Account) -> Payload:
        """Keepalive User Data Stream: extends the active key by 60 minutes, answers ``{"listenKey": ...}``;
        "if response -1125 error "This listenKey does not exist." Please use POST /fapi/v1/listenKey to
        recreate listenKey" (User Data Streams > Connect; -1125 INVALID_LISTEN_KEY in the error codes)."""
        key = self._hub.listen_keys.keepalive(account.api_key)
        if key is None:
            raise ApiError(-1125, "This listenKey does not exist.")
        return {"listenKey": key.key}

    def _close_user_stream(self, _: Params, account: Account) -> Payload:
        """Close User Data Stream: "Doing a DELETE on a listenKey will close the stream and invalidate the
        listenKey"; answers ``{}`` (User Data Streams > Close User Data Stream). Without an active key the
        simulator answers -1125 like PUT does (the venue's answer there is undocumented)."""
        if self._hub.listen_keys.close(account.api_key) is None:
            raise ApiError(-1125, "This listenKey does not exist.")
        return {}


def _position_side_param(raw: str | None) -> PositionSide | None:
    """``positionSide`` BOTH, LONG or SHORT; None if absent or not one of them."""
    if raw is None:
        return None
    try:
        return PositionSide(raw.upper())
    except ValueError:
        return None


def _without_signature(raw: str) -> str:
    """A raw query string or body without its ``signature`` parameter (signatures are computed without it)."""
    return "&".join(part for part in raw.split("&") if part and not part.startswith("signature="))


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
            {"filterType": "MIN_NOTIONAL", "notional": fmt(market.binance_min_notional)},
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


def client_order_id(order: Order) -> str:
    """The order's client id. Orders the exchange placed itself: liquidations ``autoclose-<digits>`` and ADL
    ``adl_autoclose`` (User's Force Orders response example, .../trade/rest-api/Users-Force-Orders), other
    exchange-side closes (UI close, stop) a Binance-UI-style ``web_`` id."""
    if order.client_order_id:
        return order.client_order_id
    if order.source is OrderSource.LIQUIDATION:
        return f"autoclose-{order.created_ms}{order.id % 1_000_000:06d}"
    if order.source is OrderSource.ADL:
        return "adl_autoclose"
    return f"web_{order.id}"


AUTO_CLOSE_TYPES = {OrderSource.LIQUIDATION: ("LIMIT", "IOC"), OrderSource.ADL: ("LIMIT", "GTC")}


def _order_json(order: Order, *, acknowledged_only: bool = False) -> dict[str, Any]:
    """An order as Binance answers it; ``acknowledged_only``: as just accepted (NEW, nothing executed yet)."""
    order_type, time_in_force = AUTO_CLOSE_TYPES.get(order.source, ("MARKET", "GTC"))
    executed = Decimal(0) if acknowledged_only else order.executed_qty
    status = "NEW" if acknowledged_only else order.status.value
    return {
        "orderId": order.id,
        "symbol": order.symbol,
        "status": status,
        "clientOrderId": client_order_id(order),
        "price": fmt(order.avg_price) if order.source in AUTO_CLOSE_TYPES else "0",
        "avgPrice": "0.00" if acknowledged_only else fmt(order.avg_price),
        "origQty": fmt(order.quantity),
        "executedQty": fmt(executed),
        "cumQty": fmt(executed),
        "cumQuote": fmt(executed * order.avg_price),
        "timeInForce": time_in_force,
        "type": order_type,
        "reduceOnly": order.reduce_only and order.source not in AUTO_CLOSE_TYPES,
        "closePosition": False,
        "side": order.side.value,
        "positionSide": order.position_side.value,
        "stopPrice": "0",
        "workingType": "CONTRACT_PRICE",
        "priceProtect": False,
        "origType": order_type,
        "priceMatch": "NONE",
        "selfTradePreventionMode": "EXPIRE_MAKER",
        "goodTillDate": 0,
        "time": order.created_ms,
        "updateTime": order.created_ms if acknowledged_only else order.updated_ms,
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
        "positionSide": trade.position_side.value,
        "buyer": trade.side is Side.BUY,
        "maker": False,
    }
