"""Matching core of the exchange simulator, shared by the Binance and Bybit front ends.

The core knows nothing about HTTP or either exchange's wire format. It holds, per simulator instance, the
listed markets and their mark prices, the registered API keys and their secrets, one account per API key
(one-way or hedge mode per symbol, a USDT wallet, orders and trades), the log of order-create requests
received over the API, the log of every HTTP request, the simulator's clock (wall clock plus a settable
offset) and the rate-limit state of both venues. Only MARKET orders are sent over the API: they fill
immediately and completely at the mark price, so nothing ever rests in the book.

Venue-specific order rules (minimum order value, which orders are exempt from the minimums, how long a
client order id stays taken) come from the front end as ``VenueRules``; the core applies them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from itertools import count
from typing import Any, NoReturn

from egis.simulator.limits import BinanceLimiter, BybitLimiter
from egis.simulator.markets import DEFAULT_MARKETS, MarketSpec

ZERO = Decimal(0)
BYBIT_REDUCE_ONLY_CODES = (110017, 170131)
DAY_MS = 86_400_000
# Binance bans IPs "from 2 minutes to 3 days" (USD-M docs, General Info > LIMITS > IP Limits,
# https://developers.binance.com/docs/derivatives/usds-margined-futures/general-info).
MAX_BINANCE_BAN_SECONDS = 3 * 86_400


def wall_ms() -> int:
    """Wall-clock time in epoch milliseconds (the simulator's clock is this plus the clock offset)."""
    return time.time_ns() // 1_000_000


class Side(StrEnum):
    """Order side."""

    BUY = "BUY"
    SELL = "SELL"

    @property
    def sign(self) -> int:
        """+1 for a buy, -1 for a sell: the sign of the position change."""
        return 1 if self is Side.BUY else -1


class PositionSide(StrEnum):
    """Which position an order or fill belongs to: BOTH in one-way mode, LONG or SHORT in hedge mode."""

    BOTH = "BOTH"
    LONG = "LONG"
    SHORT = "SHORT"


class OrderSource(StrEnum):
    """Who created an order.

    API: the bot. EXCHANGE: the exchange on the user's behalf (stop hit, manual close in the UI), an
    ordinary trade. LIQUIDATION: the liquidation engine (Bybit ``BustTrade``, Binance ``autoclose-``).
    ADL: auto-deleveraging (Bybit ``AdlTrade``, Binance ``adl_autoclose``).
    """

    API = "api"
    EXCHANGE = "exchange"
    LIQUIDATION = "liquidation"
    ADL = "adl"


class OrderStatus(StrEnum):
    """Order status. Market orders fill on arrival; EXPIRED/CANCELED orders never filled anything."""

    FILLED = "FILLED"
    EXPIRED = "EXPIRED"
    CANCELED = "CANCELED"


class RejectReason(StrEnum):
    """Exchange-neutral reason an order-create request is rejected; each front end maps it to native codes."""

    UNKNOWN_SYMBOL = "unknown_symbol"
    BAD_PARAMETER = "bad_parameter"
    UNSUPPORTED_ORDER_TYPE = "unsupported_order_type"
    QTY_PRECISION = "qty_precision"
    QTY_TOO_SMALL = "qty_too_small"
    QTY_TOO_LARGE = "qty_too_large"
    NOTIONAL_TOO_SMALL = "notional_too_small"
    DUPLICATE_CLIENT_ORDER_ID = "duplicate_client_order_id"
    POSITION_SIDE_MISMATCH = "position_side_mismatch"
    REDUCE_ONLY_REJECTED = "reduce_only_rejected"
    INSUFFICIENT_MARGIN = "insufficient_margin"


class OrderRejected(Exception):
    """An order-create request the exchange refuses.

    ``position_flat``: for a reduce-only rejection, whether the position was flat (rather than on the
    order's side); Bybit words the two cases differently.
    """

    def __init__(self, reason: RejectReason, detail: str, *, position_flat: bool = False) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.position_flat = position_flat


class SimulatorError(ValueError):
    """A state change that cannot be applied (unknown symbol, no position to close, invalid setting...)."""


class UnknownSymbol(SimulatorError):
    """The symbol is not listed by the simulator."""

    def __init__(self, symbol: str) -> None:
        super().__init__(f"unknown symbol {symbol!r}")
        self.symbol = symbol


@dataclass(slots=True)
class Position:
    """A position of an account in one symbol; ``quantity`` is signed (negative = short).

    In one-way mode the only position of a symbol is ``side`` BOTH; in hedge mode a symbol has a LONG
    position (quantity >= 0) and a SHORT one (quantity <= 0).
    """

    symbol: str
    side: PositionSide = PositionSide.BOTH
    quantity: Decimal = ZERO
    entry_price: Decimal = ZERO
    updated_ms: int = 0

    def notional(self, mark: Decimal) -> Decimal:
        """Signed position value at the mark price."""
        return self.quantity * mark

    def unrealized_pnl(self, mark: Decimal) -> Decimal:
        """Profit of closing the whole position at the mark price."""
        return self.quantity * (mark - self.entry_price)

    def apply(self, delta: Decimal, price: Decimal, time_ms: int) -> None:
        """Add a signed fill: the entry price is averaged on increases, reset on opens and flips."""
        old = self.quantity
        new = old + delta
        if new == 0:
            self.entry_price = ZERO
        elif old == 0 or (old > 0) != (new > 0):
            self.entry_price = price
        elif abs(new) > abs(old):
            self.entry_price = (abs(old) * self.entry_price + abs(delta) * price) / abs(new)
        self.quantity = new
        self.updated_ms = time_ms


@dataclass(frozen=True, slots=True)
class Order:
    """An order: a filled market order, or (EXPIRED/CANCELED) one that never filled."""

    id: int
    api_key: str
    symbol: str
    side: Side
    quantity: Decimal
    reduce_only: bool
    client_order_id: str | None
    source: OrderSource
    status: OrderStatus
    executed_qty: Decimal
    avg_price: Decimal
    fee: Decimal
    created_ms: int
    updated_ms: int
    position_side: PositionSide = PositionSide.BOTH

    @property
    def cum_quote(self) -> Decimal:
        """Executed value in USDT."""
        return self.executed_qty * self.avg_price

    @property
    def is_open(self) -> bool:
        """Whether the order still rests in the book (never, for the simulator's market orders)."""
        return False


@dataclass(frozen=True, slots=True)
class Trade:
    """One execution: ``realized_pnl`` is the gross profit of the closed part (``closed_qty``), fees apart."""

    id: int
    order_id: int
    symbol: str
    side: Side
    price: Decimal
    quantity: Decimal
    closed_qty: Decimal
    realized_pnl: Decimal
    fee: Decimal
    time_ms: int
    position_side: PositionSide = PositionSide.BOTH


@dataclass(frozen=True, slots=True)
class Fill:
    """The order and the trade produced by one execution."""

    order: Order
    trade: Trade


@dataclass(slots=True)
class Account:
    """Everything the simulator knows about one API key."""

    api_key: str
    wallet_balance: Decimal
    positions: dict[tuple[str, PositionSide], Position] = field(default_factory=dict)
    orders: dict[int, Order] = field(default_factory=dict)
    trades: list[Trade] = field(default_factory=list)
    leverage: dict[str, Decimal] = field(default_factory=dict)
    hedge_default: bool = False  # position mode of symbols without their own setting
    hedge_symbols: dict[str, bool] = field(default_factory=dict)  # per-symbol position mode
    realtime_floor: int = 0  # Bybit /v5/order/realtime no longer knows orders with an id <= this

    def is_hedge(self, symbol: str) -> bool:
        """Whether ``symbol`` trades in hedge mode (LONG and SHORT positions) for this account."""
        return self.hedge_symbols.get(symbol, self.hedge_default)

    def position(self, symbol: str, side: PositionSide = PositionSide.BOTH) -> Position:
        """The position in ``symbol`` on ``side``, flat if the account never traded it."""
        return self.positions.setdefault((symbol, side), Position(symbol, side))

    def symbol_positions(self, symbol: str) -> list[Position]:
        """The positions of ``symbol`` in the symbol's current mode (BOTH, or LONG then SHORT), flat ones too."""
        sides = (PositionSide.LONG, PositionSide.SHORT) if self.is_hedge(symbol) else (PositionSide.BOTH,)
        return [self.position(symbol, side) for side in sides]

    def leverage_for(self, symbol: str) -> Decimal:
        """The leverage set for ``symbol`` (1 until changed)."""
        return self.leverage.get(symbol, Decimal(1))

    def open_positions(self) -> list[Position]:
        """The non-flat positions, by symbol (LONG before SHORT)."""
        order = {PositionSide.BOTH: 0, PositionSide.LONG: 1, PositionSide.SHORT: 2}
        return sorted((p for p in self.positions.values() if p.quantity), key=lambda p: (p.symbol, order[p.side]))

    def has_client_order_id(self, client_order_id: str, *, open_only: bool = False) -> bool:
        """Whether an earlier order of the account (an open one, with ``open_only``) used this client id."""
        return any(
            order.client_order_id == client_order_id and (order.is_open or not open_only)
            for order in self.orders.values()
        )

    def order_by_id(self, symbol: str, order_id: int) -> Order | None:
        """The order of ``symbol`` with this exchange id, if any."""
        order = self.orders.get(order_id)
        return order if order is not None and order.symbol == symbol else None


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """An order-create request as received over the API, before validation (fields are raw strings).

    ``position_side``: the position the order is for, as the front end read it from the request (None:
    the request named none). ``close_position``: close the whole position whatever ``quantity`` says
    (Bybit's qty "0" with reduceOnly and closeOnTrigger).
    """

    api_key: str
    venue: str
    symbol: str
    side: str
    order_type: str
    quantity: str
    reduce_only: bool
    client_order_id: str | None
    position_side: PositionSide | None = None
    close_position: bool = False


@dataclass(frozen=True, slots=True)
class VenueRules:
    """The order rules of one venue, as the front end applies them to one request.

    ``min_notional``: the market's minimum order value on this venue (quantity x mark price).
    ``closing_exempt_from_min_qty`` / ``closing_exempt_from_min_notional``: whether an order that can only
    reduce (reduce-only, or a closing order in hedge mode) may be below the minimum quantity / the minimum
    order value.
    ``client_id_unique_forever``: whether a client order id stays taken after its order is closed
    (otherwise it is unique among open orders only).
    """

    min_notional: Callable[[MarketSpec], Decimal]
    closing_exempt_from_min_qty: bool
    closing_exempt_from_min_notional: bool
    client_id_unique_forever: bool


@dataclass(frozen=True, slots=True)
class OrderLogEntry:
    """One order-create request received over the API and what became of it."""

    seq: int
    time_ms: int
    api_key: str
    venue: str
    symbol: str
    side: str
    order_type: str
    quantity: Decimal | None
    reduce_only: bool
    client_order_id: str | None
    outcome: str
    order_id: int | None
    error_code: int | None
    reason: str | None
    position_side: str | None = None


@dataclass(frozen=True, slots=True)
class RequestLogEntry:
    """One HTTP request received by an exchange front end (control calls are not logged)."""

    seq: int
    time_ms: int
    method: str
    path: str
    query: dict[str, str]
    body: dict[str, Any]
    api_key: str | None
    fault: str | None


@dataclass(frozen=True, slots=True)
class Balance:
    """USDT balance of an account: equity = wallet + unrealized PnL; available = equity - initial margin."""

    wallet: Decimal
    unrealized_pnl: Decimal
    equity: Decimal
    initial_margin: Decimal
    available: Decimal


@dataclass(slots=True)
class Settings:
    """Tunable behaviour of one simulator; every default is what the real venue does (see each front end).

    Order rules:
      bybit_reduce_only_code: retCode of a Bybit reduce-only order that cannot reduce (110017, or 170131).
      bybit_reduce_only_min_notional_exempt: whether Bybit lets reduce-only orders below minNotionalValue.
      bybit_reduce_only_min_qty_exempt: whether Bybit lets reduce-only orders below minOrderQty.
      binance_reject_reused_client_id: refuse a Binance newClientOrderId used by ANY earlier order (-4116),
        not only by an open one.
      binance_market_new_answer: answer Binance MARKET orders NEW with executedQty 0 even when
        newOrderRespType=RESULT was asked.
    Look-ups:
      bybit_realtime_closed_cap: how many closed orders per account /v5/order/realtime keeps.
      bybit_history_delay_ms: how long after its last update an order appears in /v5/order/history.
    Answers:
      rate_limit_headers: send the venues' rate-limit headers on every answer (Binance
        ``X-MBX-USED-WEIGHT-1M`` and the order counts, Bybit ``X-Bapi-Limit*``). Off exists to test
        ``egis selftest``'s "differs" row for a venue (or a proxy in front of it) that drops them;
        ``Retry-After`` on a throttling answer is part of that answer and stays.
    Authentication and clock:
      check_signatures: verify request signatures and timestamps (unknown API keys are refused anyway).
      clock_offset_ms: added to the wall clock to give the simulator's clock (server time, order times,
        the recvWindow check).
    Rate limits (smaller values make tests fast):
      binance_weight_limit: request weight per IP per minute; binance_order_limit_10s/_1m: orders per
      account per 10 s / minute; binance_ban_seconds: first IP ban (doubles per repeat, at most 3 days).
      bybit_ip_limit: requests per IP per 5 s; bybit_ip_ban_seconds: how long the IP is refused after;
      bybit_endpoint_limit: requests per UID per endpoint per second (0: each endpoint's documented limit).
    Money: fee_rate (of the executed value), starting_balance (USDT of a new account).
    """

    bybit_reduce_only_code: int = 110017
    bybit_reduce_only_min_notional_exempt: bool = True
    bybit_reduce_only_min_qty_exempt: bool = False
    binance_reject_reused_client_id: bool = False
    binance_market_new_answer: bool = False
    bybit_realtime_closed_cap: int = 500
    bybit_history_delay_ms: int = 500
    rate_limit_headers: bool = True
    check_signatures: bool = True
    clock_offset_ms: int = 0
    binance_weight_limit: int = 2400
    binance_order_limit_10s: int = 300
    binance_order_limit_1m: int = 1200
    binance_ban_seconds: int = 120
    bybit_ip_limit: int = 600
    bybit_ip_ban_seconds: int = 600
    bybit_endpoint_limit: int = 0
    fee_rate: Decimal = ZERO
    starting_balance: Decimal = Decimal(10000)


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be positive"


def _not_negative(value: Any) -> str | None:
    return None if value >= 0 else "must not be negative"


_SETTING_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "bybit_reduce_only_code": lambda v: (
        None if v in BYBIT_REDUCE_ONLY_CODES else f"must be one of {BYBIT_REDUCE_ONLY_CODES}"
    ),
    "bybit_realtime_closed_cap": _not_negative,
    "bybit_history_delay_ms": _not_negative,
    "binance_weight_limit": _positive,
    "binance_order_limit_10s": _positive,
    "binance_order_limit_1m": _positive,
    "binance_ban_seconds": lambda v: None if 0 < v <= MAX_BINANCE_BAN_SECONDS else "must be in (0, 259200]",
    "bybit_ip_limit": _positive,
    "bybit_ip_ban_seconds": _positive,
    "bybit_endpoint_limit": _not_negative,
    "fee_rate": lambda v: None if ZERO <= v < 1 else "must be in [0, 1)",
    "starting_balance": _not_negative,
}
SETTING_TYPES: dict[str, type] = {f.name: type(f.default) for f in dataclasses.fields(Settings)}


class SimulatorCore:
    """State and matching rules of one simulated exchange; see the module docstring."""

    def __init__(self, markets: Iterable[MarketSpec] = DEFAULT_MARKETS) -> None:
        self._listed = tuple(markets)
        self._order_ids = count(100_000_001)
        self._trade_ids = count(1)
        self._log_seq = count(1)
        self.markets: dict[str, MarketSpec] = {spec.symbol: spec for spec in self._listed}
        self.mark_prices: dict[str, Decimal] = {}
        self.accounts: dict[str, Account] = {}
        self.api_keys: dict[str, str] = {}
        self.order_log: list[OrderLogEntry] = []
        self.request_log: list[RequestLogEntry] = []
        self.settings = Settings()
        self.binance_limits = BinanceLimiter()
        self.bybit_limits = BybitLimiter()
        # Called with every fill, API and exchange-side alike, right after it is recorded (the private
        # streams push it); they survive reset().
        self.fill_listeners: list[Callable[[Fill], None]] = []
        self.reset()

    def reset(self) -> None:
        """Back to the initial state: default prices and settings, no accounts, empty logs, no bans.

        Registered API keys stay (they are credentials, like keys created on the venue's website), and
        order and trade ids keep counting, so an id seen before a reset never names a different order.
        """
        self.mark_prices = {spec.symbol: spec.initial_price for spec in self._listed}
        self.accounts = {}
        self.order_log = []
        self.request_log = []
        self.settings = Settings()
        self.binance_limits.reset()
        self.bybit_limits.reset()

    def now_ms(self) -> int:
        """The simulator's clock in epoch milliseconds: the wall clock plus ``clock_offset_ms``."""
        return wall_ms() + self.settings.clock_offset_ms

    # ----------------------------------------------------------------- markets, keys and accounts

    def market(self, symbol: str) -> MarketSpec:
        """The listed market ``symbol``; raises UnknownSymbol."""
        try:
            return self.markets[symbol]
        except KeyError:
            raise UnknownSymbol(symbol) from None

    def set_price(self, symbol: str, price: Decimal) -> None:
        """Move the mark price (all fills and valuations use it)."""
        self.market(symbol)
        if price <= 0:
            raise SimulatorError(f"price must be positive, got {price}")
        self.mark_prices[symbol] = price

    def register_api_key(self, api_key: str, secret: str) -> None:
        """Accept ``api_key`` on private endpoints, its requests signed with ``secret``."""
        if not api_key or not secret:
            raise SimulatorError("api_key and secret must be non-empty")
        self.api_keys[api_key] = secret

    def unregister_api_key(self, api_key: str) -> bool:
        """Refuse ``api_key`` from now on (like a key deleted on the venue); whether it was registered."""
        return self.api_keys.pop(api_key, None) is not None

    def account(self, api_key: str) -> Account:
        """The account of ``api_key``, created with the starting balance on first use."""
        if api_key not in self.accounts:
            self.accounts[api_key] = Account(api_key, self.settings.starting_balance)
        return self.accounts[api_key]

    def set_balance(self, api_key: str, balance: Decimal) -> None:
        """Overwrite the USDT wallet balance of an account."""
        if balance < 0:
            raise SimulatorError(f"balance must not be negative, got {balance}")
        self.account(api_key).wallet_balance = balance

    def set_leverage(self, api_key: str, symbol: str, leverage: Decimal) -> None:
        """Set the leverage of ``symbol`` (the margin check divides exposure by it)."""
        self.market(symbol)
        if leverage <= 0:
            raise SimulatorError(f"leverage must be positive, got {leverage}")
        self.account(api_key).leverage[symbol] = leverage

    def set_position_mode(self, api_key: str, hedge: bool, symbol: str | None = None) -> list[str]:
        """Switch hedge mode on or off for ``symbol``, or for the whole account; returns the symbols switched.

        Like both venues, a symbol with a position keeps its mode: switching it alone is refused, and an
        account-wide switch skips it (Bybit ``coin`` switch; Binance refuses the whole switch instead,
        which its front end checks before calling this).
        """
        account = self.account(api_key)
        if symbol is not None:
            self.market(symbol)
            if account.is_hedge(symbol) != hedge and self._has_position(account, symbol):
                raise SimulatorError(f"{symbol} has a position: its position mode cannot be switched")
            account.hedge_symbols[symbol] = hedge
            return [symbol]
        account.hedge_default = hedge
        switched = []
        for name in self.markets:
            if not self._has_position(account, name):
                account.hedge_symbols.pop(name, None)
                switched.append(name)
        return switched

    def _has_position(self, account: Account, symbol: str) -> bool:
        return any(p.quantity for p in account.positions.values() if p.symbol == symbol)

    def update_settings(self, **changes: Any) -> Settings:
        """Change the given settings (all validated before any is applied) and return them all."""
        for name, value in changes.items():
            if name not in SETTING_TYPES:
                raise SimulatorError(f"unknown setting {name!r}")
            expected = SETTING_TYPES[name]
            if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
                raise SimulatorError(f"{name} must be a {expected.__name__}, got {value!r}")
            check = _SETTING_CHECKS.get(name)
            problem = check(value) if check else None
            if problem:
                raise SimulatorError(f"{name} {problem}, got {value}")
        for name, value in changes.items():
            setattr(self.settings, name, value)
        return self.settings

    # ----------------------------------------------------------------- time travel

    def age_account(self, api_key: str, seconds: int) -> dict[str, int]:
        """Move an account's history ``seconds`` into the past: order, trade and position times.

        Used with look-up windows and horizons (7 days, 90 days...): the account looks as if it had
        traded that long ago. Returns how many orders, trades and positions were shifted.
        """
        if seconds < 0:
            raise SimulatorError(f"seconds must not be negative, got {seconds}")
        account = self.accounts.get(api_key)
        if account is None:
            raise SimulatorError(f"no account {api_key!r}")
        shift = seconds * 1000
        account.orders = {
            order_id: dataclasses.replace(o, created_ms=o.created_ms - shift, updated_ms=o.updated_ms - shift)
            for order_id, o in account.orders.items()
        }
        account.trades = [dataclasses.replace(t, time_ms=t.time_ms - shift) for t in account.trades]
        for position in account.positions.values():
            if position.updated_ms:
                position.updated_ms -= shift
        return {"orders": len(account.orders), "trades": len(account.trades), "positions": len(account.positions)}

    def forget_realtime_orders(self, api_key: str | None = None) -> int:
        """Empty Bybit's realtime order cache (of one account, or all), as a Bybit restart does.

        The orders stay in the account (and in /v5/order/history); returns how many accounts were touched.
        """
        accounts = [self.accounts[api_key]] if api_key in self.accounts else []
        if api_key is None:
            accounts = list(self.accounts.values())
        for account in accounts:
            account.realtime_floor = max(account.orders, default=account.realtime_floor)
        return len(accounts)

    # ----------------------------------------------------------------- valuation

    def balance(self, account: Account) -> Balance:
        """The USDT balance figures of an account at the current mark prices."""
        unrealized = self.unrealized_pnl(account)
        initial_margin = self.initial_margin(account)
        equity = account.wallet_balance + unrealized
        return Balance(
            wallet=account.wallet_balance,
            unrealized_pnl=unrealized,
            equity=equity,
            initial_margin=initial_margin,
            available=max(equity - initial_margin, ZERO),
        )

    def initial_margin(self, account: Account) -> Decimal:
        """Margin locked by all positions: exposure at the mark price divided by the leverage."""
        return sum(
            (
                abs(p.notional(self.mark_prices[p.symbol])) / account.leverage_for(p.symbol)
                for p in account.positions.values()
            ),
            ZERO,
        )

    def unrealized_pnl(self, account: Account) -> Decimal:
        """Unrealized profit of all positions at the mark prices."""
        return sum((p.unrealized_pnl(self.mark_prices[p.symbol]) for p in account.positions.values()), ZERO)

    # ----------------------------------------------------------------- orders over the API

    def place_order(
        self, request: OrderRequest, native_code: Callable[[RejectReason], int], rules: VenueRules
    ) -> Order:
        """Validate and execute an order-create request received over the API, and log it.

        ``native_code`` gives the exchange-native error code recorded in the order log for a rejection.
        Raises OrderRejected. The duplicate-client-id check precedes the position checks, so a retried
        close whose first attempt went through (and whose id is still taken) is reported as a duplicate,
        not as a reduce-only rejection.
        """
        try:
            order = self._execute(request, rules)
        except OrderRejected as exc:
            self._log_order(request, None, exc.reason, native_code(exc.reason))
            raise
        self._log_order(request, order.id, None, None)
        return order

    def reject_order(
        self,
        request: OrderRequest,
        reason: RejectReason,
        detail: str,
        native_code: Callable[[RejectReason], int],
    ) -> NoReturn:
        """Log an order-create request a front end refuses for protocol reasons; raises OrderRejected."""
        self._log_order(request, None, reason, native_code(reason))
        raise OrderRejected(reason, detail)

    def _execute(self, request: OrderRequest, rules: VenueRules) -> Order:
        try:
            market = self.market(request.symbol)
        except UnknownSymbol as exc:
            raise OrderRejected(RejectReason.UNKNOWN_SYMBOL, str(exc)) from None
        if request.order_type != "MARKET":
            raise OrderRejected(
                RejectReason.UNSUPPORTED_ORDER_TYPE,
                f"order type {request.order_type!r} is not supported, only MARKET",
            )
        side = _parse_side(request.side)
        account = self.account(request.api_key)
        position_side = _position_side(account.is_hedge(market.symbol), request.position_side)
        closing = request.reduce_only or _closes(position_side, side)
        position = account.position(market.symbol, position_side)
        if request.close_position:  # the position's size, checked below like any reduce-only order
            quantity = market.max_qty
        else:
            exempt = closing and rules.closing_exempt_from_min_qty
            quantity = _validated_quantity(market, request.quantity, exempt_from_minimum=exempt)
        if request.client_order_id and account.has_client_order_id(
            request.client_order_id, open_only=not rules.client_id_unique_forever
        ):
            raise OrderRejected(
                RejectReason.DUPLICATE_CLIENT_ORDER_ID,
                f"client order id {request.client_order_id!r} is taken",
            )
        mark = self.mark_prices[market.symbol]
        min_notional = rules.min_notional(market)
        notional_exempt = closing and (request.close_position or rules.closing_exempt_from_min_notional)
        if not notional_exempt and quantity * mark < min_notional:
            raise OrderRejected(
                RejectReason.NOTIONAL_TOO_SMALL,
                f"order value {quantity * mark} is below the minimum {min_notional}",
            )
        if closing:
            quantity = _reduce_only_quantity(position, side, quantity)
        else:
            self._check_margin(account, position, side, quantity)
        fill = self._fill(
            account,
            position,
            side,
            quantity,
            mark,
            reduce_only=request.reduce_only,
            client_order_id=request.client_order_id,
            source=OrderSource.API,
        )
        return fill.order

    def _check_margin(self, account: Account, position: Position, side: Side, quantity: Decimal) -> None:
        mark = self.mark_prices[position.symbol]
        leverage = account.leverage_for(position.symbol)
        current = position.quantity
        before = self.initial_margin(account)
        after = before + (abs(current + side.sign * quantity) - abs(current)) * mark / leverage
        if after > before and after > account.wallet_balance:
            raise OrderRejected(
                RejectReason.INSUFFICIENT_MARGIN,
                f"initial margin {after} would exceed the wallet balance {account.wallet_balance}",
            )

    def _log_order(
        self, request: OrderRequest, order_id: int | None, reason: RejectReason | None, code: int | None
    ) -> None:
        self.order_log.append(
            OrderLogEntry(
                seq=next(self._log_seq),
                time_ms=self.now_ms(),
                api_key=request.api_key,
                venue=request.venue,
                symbol=request.symbol,
                side=request.side,
                order_type=request.order_type,
                quantity=_decimal_or_none(request.quantity),
                reduce_only=request.reduce_only,
                client_order_id=request.client_order_id,
                outcome="accepted" if reason is None else "rejected",
                order_id=order_id,
                error_code=code,
                reason=None if reason is None else reason.value,
                position_side=None if request.position_side is None else request.position_side.value,
            )
        )

    def record_unfilled_order(
        self,
        api_key: str,
        symbol: str,
        side: Side,
        quantity: Decimal,
        *,
        status: OrderStatus = OrderStatus.EXPIRED,
        client_order_id: str | None = None,
    ) -> Order:
        """Record an order that ended without any fill (e.g. an IOC that found no liquidity).

        The API never produces one (market orders always fill); tests use it to exercise the look-up
        horizons that depend on an order having no fill.
        """
        if status is OrderStatus.FILLED:
            raise SimulatorError("an unfilled order cannot be FILLED")
        self.market(symbol)
        account = self.account(api_key)
        time_ms = self.now_ms()
        order = Order(
            id=next(self._order_ids),
            api_key=api_key,
            symbol=symbol,
            side=side,
            quantity=quantity,
            reduce_only=False,
            client_order_id=client_order_id,
            source=OrderSource.API,
            status=status,
            executed_qty=ZERO,
            avg_price=ZERO,
            fee=ZERO,
            created_ms=time_ms,
            updated_ms=time_ms,
        )
        account.orders[order.id] = order
        return order

    # ----------------------------------------------------------------- exchange-side actions

    def close_position(
        self,
        api_key: str,
        symbol: str,
        price: Decimal | None = None,
        position_side: PositionSide | None = None,
        source: OrderSource = OrderSource.EXCHANGE,
    ) -> Fill:
        """Close a whole position on the exchange side (stop hit, manual close in the UI; or ``source``
        LIQUIDATION / ADL). ``position_side`` is needed only when both hedge-mode sides are open."""
        position = self._open_position(api_key, symbol, position_side)
        return self._exchange_fill(api_key, position, abs(position.quantity), price, source)

    def reduce_position(
        self,
        api_key: str,
        symbol: str,
        quantity: Decimal,
        price: Decimal | None = None,
        position_side: PositionSide | None = None,
        source: OrderSource = OrderSource.EXCHANGE,
    ) -> Fill:
        """Reduce a position by ``quantity`` on the exchange side (partial stop, manual partial close...)."""
        position = self._open_position(api_key, symbol, position_side)
        market = self.market(symbol)
        if quantity <= 0 or quantity > abs(position.quantity):
            raise SimulatorError(f"quantity must be in (0, {abs(position.quantity)}], got {quantity}")
        if quantity % market.qty_step:
            raise SimulatorError(f"quantity {quantity} is not a multiple of the step {market.qty_step}")
        return self._exchange_fill(api_key, position, quantity, price, source)

    def liquidate(
        self, api_key: str, symbol: str, price: Decimal | None = None, position_side: PositionSide | None = None
    ) -> Fill:
        """The liquidation engine takes over and closes the whole position (at ``price``, default the mark)."""
        return self.close_position(api_key, symbol, price, position_side, OrderSource.LIQUIDATION)

    def auto_deleverage(
        self,
        api_key: str,
        symbol: str,
        quantity: Decimal | None = None,
        price: Decimal | None = None,
        position_side: PositionSide | None = None,
    ) -> Fill:
        """Auto-deleveraging closes ``quantity`` of the position (default all of it)."""
        if quantity is None:
            return self.close_position(api_key, symbol, price, position_side, OrderSource.ADL)
        return self.reduce_position(api_key, symbol, quantity, price, position_side, OrderSource.ADL)

    def _open_position(self, api_key: str, symbol: str, position_side: PositionSide | None) -> Position:
        self.market(symbol)
        account = self.account(api_key)
        candidates = [
            p
            for p in account.positions.values()
            if p.symbol == symbol and p.quantity and position_side in (None, p.side)
        ]
        if not candidates:
            which = "" if position_side is None else f" {position_side.value}"
            raise SimulatorError(f"account {api_key!r} has no open{which} {symbol} position")
        if len(candidates) > 1:
            raise SimulatorError(f"both sides of {symbol} are open: give position_side LONG or SHORT")
        return candidates[0]

    def _exchange_fill(
        self, api_key: str, position: Position, quantity: Decimal, price: Decimal | None, source: OrderSource
    ) -> Fill:
        if price is not None and price <= 0:
            raise SimulatorError(f"price must be positive, got {price}")
        side = Side.SELL if position.quantity > 0 else Side.BUY
        return self._fill(
            self.account(api_key),
            position,
            side,
            quantity,
            self.mark_prices[position.symbol] if price is None else price,
            reduce_only=True,
            client_order_id=None,
            source=source,
        )

    # ----------------------------------------------------------------- execution

    def _fill(
        self,
        account: Account,
        position: Position,
        side: Side,
        quantity: Decimal,
        price: Decimal,
        *,
        reduce_only: bool,
        client_order_id: str | None,
        source: OrderSource,
    ) -> Fill:
        closed = _closing_quantity(position.quantity, side, quantity)
        realized = closed * (price - position.entry_price) * (1 if position.quantity > 0 else -1)
        fee = quantity * price * self.settings.fee_rate
        time_ms = self.now_ms()
        position.apply(side.sign * quantity, price, time_ms)
        account.wallet_balance += realized - fee
        order = Order(
            id=next(self._order_ids),
            api_key=account.api_key,
            symbol=position.symbol,
            side=side,
            quantity=quantity,
            reduce_only=reduce_only,
            client_order_id=client_order_id,
            source=source,
            status=OrderStatus.FILLED,
            executed_qty=quantity,
            avg_price=price,
            fee=fee,
            created_ms=time_ms,
            updated_ms=time_ms,
            position_side=position.side,
        )
        trade = Trade(
            id=next(self._trade_ids),
            order_id=order.id,
            symbol=position.symbol,
            side=side,
            price=price,
            quantity=quantity,
            closed_qty=closed,
            realized_pnl=realized,
            fee=fee,
            time_ms=time_ms,
            position_side=position.side,
        )
        account.orders[order.id] = order
        account.trades.append(trade)
        fill = Fill(order, trade)
        for listener in self.fill_listeners:
            listener(fill)
        return fill

    # ----------------------------------------------------------------- request log

    def log_request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str],
        body: dict[str, Any],
        api_key: str | None,
        fault: str | None,
    ) -> None:
        """Record one HTTP request received by a front end (``fault``: kind of fault injected, if any)."""
        self.request_log.append(
            RequestLogEntry(
                seq=next(self._log_seq),
                time_ms=self.now_ms(),
                method=method,
                path=path,
                query=query,
                body=body,
                api_key=api_key,
                fault=fault,
            )
        )


def _parse_side(raw: str) -> Side:
    try:
        return Side(raw)
    except ValueError:
        raise OrderRejected(RejectReason.BAD_PARAMETER, f"side {raw!r} is not BUY or SELL") from None


def _position_side(hedge: bool, requested: PositionSide | None) -> PositionSide:
    """The position an order is for: one-way mode takes BOTH (or nothing), hedge mode LONG or SHORT."""
    if hedge:
        if requested in (PositionSide.LONG, PositionSide.SHORT):
            return requested
        raise OrderRejected(
            RejectReason.POSITION_SIDE_MISMATCH, "hedge mode: the order must name the LONG or SHORT position"
        )
    if requested in (None, PositionSide.BOTH):
        return PositionSide.BOTH
    raise OrderRejected(RejectReason.POSITION_SIDE_MISMATCH, f"one-way mode: position side {requested} is not BOTH")


def _closes(position_side: PositionSide, side: Side) -> bool:
    """Whether a hedge-mode order only closes: a SELL on the LONG position or a BUY on the SHORT one."""
    return (position_side, side) in ((PositionSide.LONG, Side.SELL), (PositionSide.SHORT, Side.BUY))


def _decimal_or_none(raw: str) -> Decimal | None:
    try:
        value = Decimal(raw)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _validated_quantity(market: MarketSpec, raw: str, *, exempt_from_minimum: bool = False) -> Decimal:
    """Step and maximum always; the minimum unless the venue exempts this (closing) order from it.

    An exempt reduce-only order may close a remainder below the minimum (left by a partial stop or a
    partial manual close), which is the only way such a remainder can be closed at all.
    """
    quantity = _decimal_or_none(raw)
    if quantity is None:
        raise OrderRejected(RejectReason.BAD_PARAMETER, f"quantity {raw!r} is not a number")
    if quantity > market.max_qty:  # first: the remainder below is undefined for huge values
        raise OrderRejected(RejectReason.QTY_TOO_LARGE, f"quantity {quantity} is above the maximum {market.max_qty}")
    if quantity % market.qty_step:
        raise OrderRejected(
            RejectReason.QTY_PRECISION, f"quantity {quantity} is not a multiple of the step {market.qty_step}"
        )
    if quantity <= 0 or (not exempt_from_minimum and quantity < market.min_qty):
        raise OrderRejected(RejectReason.QTY_TOO_SMALL, f"quantity {quantity} is below the minimum {market.min_qty}")
    return quantity


def _reduce_only_quantity(position: Position, side: Side, quantity: Decimal) -> Decimal:
    """The executable size of a reduce-only order: capped to the position; rejected if it would not reduce."""
    if not _reduces(position.quantity, side):
        raise OrderRejected(
            RejectReason.REDUCE_ONLY_REJECTED,
            f"reduce-only {side} with position {position.quantity} would not reduce it",
            position_flat=not position.quantity,
        )
    return min(quantity, abs(position.quantity))


def _closing_quantity(current: Decimal, side: Side, quantity: Decimal) -> Decimal:
    """The part of a fill that closes an existing position (the rest opens or increases)."""
    return min(quantity, abs(current)) if _reduces(current, side) else ZERO


def _reduces(current: Decimal, side: Side) -> bool:
    """Whether a fill on ``side`` reduces a position of signed size ``current``."""
    return current * side.sign < 0
