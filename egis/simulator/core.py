"""Matching core of the exchange simulator, shared by the Binance and Bybit front ends.

The core knows nothing about HTTP or either exchange's wire format. It holds, per simulator instance, the
listed markets and their mark prices, one account per API key (one-way mode: one signed position per
symbol, a USDT wallet, orders and trades), the log of order-create requests received over the API and the
log of every HTTP request. Only MARKET orders exist: they fill immediately and completely at the mark
price, so every order in the book is FILLED and nothing ever rests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from itertools import count
from typing import Any, NoReturn

from egis.simulator.markets import DEFAULT_MARKETS, MarketSpec

ZERO = Decimal(0)
BYBIT_REDUCE_ONLY_CODES = (170131, 110017)


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds, the unit both exchanges use."""
    return time.time_ns() // 1_000_000


class Side(StrEnum):
    """Order side."""

    BUY = "BUY"
    SELL = "SELL"

    @property
    def sign(self) -> int:
        """+1 for a buy, -1 for a sell: the sign of the position change."""
        return 1 if self is Side.BUY else -1


class OrderSource(StrEnum):
    """Who created an order: the bot over the API, or the exchange itself (stop hit, manual UI close)."""

    API = "api"
    EXCHANGE = "exchange"


class OrderStatus(StrEnum):
    """Order status. Market orders fill on arrival, so FILLED is the only status an order can have."""

    FILLED = "FILLED"


class RejectReason(StrEnum):
    """Exchange-neutral reason an order-create request is rejected; each front end maps it to native codes."""

    UNKNOWN_SYMBOL = "unknown_symbol"
    BAD_PARAMETER = "bad_parameter"
    UNSUPPORTED_ORDER_TYPE = "unsupported_order_type"
    QTY_PRECISION = "qty_precision"
    QTY_TOO_SMALL = "qty_too_small"
    QTY_TOO_LARGE = "qty_too_large"
    DUPLICATE_CLIENT_ORDER_ID = "duplicate_client_order_id"
    REDUCE_ONLY_REJECTED = "reduce_only_rejected"
    INSUFFICIENT_MARGIN = "insufficient_margin"


class OrderRejected(Exception):
    """An order-create request the exchange refuses."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SimulatorError(ValueError):
    """A state change that cannot be applied (unknown symbol, no position to close, invalid setting...)."""


class UnknownSymbol(SimulatorError):
    """The symbol is not listed by the simulator."""

    def __init__(self, symbol: str) -> None:
        super().__init__(f"unknown symbol {symbol!r}")
        self.symbol = symbol


@dataclass(slots=True)
class Position:
    """The one-way position of an account in one symbol; ``quantity`` is signed (negative = short)."""

    symbol: str
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
    """A filled market order."""

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

    @property
    def cum_quote(self) -> Decimal:
        """Executed value in USDT."""
        return self.executed_qty * self.avg_price


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
    positions: dict[str, Position] = field(default_factory=dict)
    orders: dict[int, Order] = field(default_factory=dict)
    trades: list[Trade] = field(default_factory=list)
    leverage: dict[str, Decimal] = field(default_factory=dict)

    def position(self, symbol: str) -> Position:
        """The position in ``symbol``, flat if the account never traded it."""
        return self.positions.setdefault(symbol, Position(symbol))

    def leverage_for(self, symbol: str) -> Decimal:
        """The leverage set for ``symbol`` (1 until changed)."""
        return self.leverage.get(symbol, Decimal(1))

    def open_positions(self) -> list[Position]:
        """The non-flat positions, by symbol."""
        return sorted((p for p in self.positions.values() if p.quantity), key=lambda p: p.symbol)

    def has_client_order_id(self, client_order_id: str) -> bool:
        """Whether any earlier order of the account used this client order id."""
        return any(order.client_order_id == client_order_id for order in self.orders.values())

    def order_by_id(self, symbol: str, order_id: int) -> Order | None:
        """The order of ``symbol`` with this exchange id, if any."""
        order = self.orders.get(order_id)
        return order if order is not None and order.symbol == symbol else None


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """An order-create request as received over the API, before validation (fields are raw strings)."""

    api_key: str
    venue: str
    symbol: str
    side: str
    order_type: str
    quantity: str
    reduce_only: bool
    client_order_id: str | None


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
    """Tunable behaviour of one simulator."""

    bybit_reduce_only_code: int = 170131
    fee_rate: Decimal = ZERO
    starting_balance: Decimal = Decimal(10000)


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
        self.order_log: list[OrderLogEntry] = []
        self.request_log: list[RequestLogEntry] = []
        self.settings = Settings()
        self.reset()

    def reset(self) -> None:
        """Back to the initial state: default prices and settings, no accounts, empty logs.

        Order and trade ids keep counting, so an id seen before a reset never names a different order.
        """
        self.mark_prices = {spec.symbol: spec.initial_price for spec in self._listed}
        self.accounts = {}
        self.order_log = []
        self.request_log = []
        self.settings = Settings()

    # ----------------------------------------------------------------- markets and accounts

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

    def update_settings(
        self,
        *,
        bybit_reduce_only_code: int | None = None,
        fee_rate: Decimal | None = None,
        starting_balance: Decimal | None = None,
    ) -> Settings:
        """Change the given settings (all validated before any is applied) and return them all."""
        if bybit_reduce_only_code is not None and bybit_reduce_only_code not in BYBIT_REDUCE_ONLY_CODES:
            raise SimulatorError(f"bybit_reduce_only_code must be one of {BYBIT_REDUCE_ONLY_CODES}")
        if fee_rate is not None and not ZERO <= fee_rate < 1:
            raise SimulatorError(f"fee_rate must be in [0, 1), got {fee_rate}")
        if starting_balance is not None and starting_balance < 0:
            raise SimulatorError(f"starting_balance must not be negative, got {starting_balance}")
        if bybit_reduce_only_code is not None:
            self.settings.bybit_reduce_only_code = bybit_reduce_only_code
        if fee_rate is not None:
            self.settings.fee_rate = fee_rate
        if starting_balance is not None:
            self.settings.starting_balance = starting_balance
        return self.settings

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

    def place_order(self, request: OrderRequest, native_code: Callable[[RejectReason], int]) -> Order:
        """Validate and execute an order-create request received over the API, and log it.

        ``native_code`` gives the exchange-native error code recorded in the order log for a rejection.
        Raises OrderRejected. The duplicate-client-id check precedes the position checks, so a retried
        close whose first attempt went through is reported as a duplicate, not as a reduce-only rejection.
        """
        try:
            order = self._execute(request)
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

    def _execute(self, request: OrderRequest) -> Order:
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
        quantity = _validated_quantity(market, request.quantity, reduce_only=request.reduce_only)
        account = self.account(request.api_key)
        if request.client_order_id and account.has_client_order_id(request.client_order_id):
            raise OrderRejected(
                RejectReason.DUPLICATE_CLIENT_ORDER_ID,
                f"client order id {request.client_order_id!r} is taken",
            )
        if request.reduce_only:
            quantity = _reduce_only_quantity(account.position(market.symbol), side, quantity)
        else:
            self._check_margin(account, market.symbol, side, quantity)
        fill = self._fill(
            account,
            market.symbol,
            side,
            quantity,
            self.mark_prices[market.symbol],
            reduce_only=request.reduce_only,
            client_order_id=request.client_order_id,
            source=OrderSource.API,
        )
        return fill.order

    def _check_margin(self, account: Account, symbol: str, side: Side, quantity: Decimal) -> None:
        mark = self.mark_prices[symbol]
        leverage = account.leverage_for(symbol)
        current = account.position(symbol).quantity
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
                time_ms=now_ms(),
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
            )
        )

    # ----------------------------------------------------------------- exchange-side actions

    def close_position(self, api_key: str, symbol: str, price: Decimal | None = None) -> Fill:
        """Close the whole position on the exchange side (stop hit, manual close in the UI)."""
        position = self._open_position(api_key, symbol)
        return self._exchange_fill(api_key, symbol, abs(position.quantity), price)

    def reduce_position(self, api_key: str, symbol: str, quantity: Decimal, price: Decimal | None = None) -> Fill:
        """Reduce the position by ``quantity`` on the exchange side (partial stop, manual partial close)."""
        position = self._open_position(api_key, symbol)
        market = self.market(symbol)
        if quantity <= 0 or quantity > abs(position.quantity):
            raise SimulatorError(f"quantity must be in (0, {abs(position.quantity)}], got {quantity}")
        if quantity % market.qty_step:
            raise SimulatorError(f"quantity {quantity} is not a multiple of the step {market.qty_step}")
        return self._exchange_fill(api_key, symbol, quantity, price)

    def _open_position(self, api_key: str, symbol: str) -> Position:
        self.market(symbol)
        position = self.account(api_key).position(symbol)
        if not position.quantity:
            raise SimulatorError(f"account {api_key!r} has no open {symbol} position")
        return position

    def _exchange_fill(self, api_key: str, symbol: str, quantity: Decimal, price: Decimal | None) -> Fill:
        if price is not None and price <= 0:
            raise SimulatorError(f"price must be positive, got {price}")
        account = self.account(api_key)
        side = Side.SELL if account.position(symbol).quantity > 0 else Side.BUY
        return self._fill(
            account,
            symbol,
            side,
            quantity,
            self.mark_prices[symbol] if price is None else price,
            reduce_only=True,
            client_order_id=None,
            source=OrderSource.EXCHANGE,
        )

    # ----------------------------------------------------------------- execution

    def _fill(
        self,
        account: Account,
        symbol: str,
        side: Side,
        quantity: Decimal,
        price: Decimal,
        *,
        reduce_only: bool,
        client_order_id: str | None,
        source: OrderSource,
    ) -> Fill:
        position = account.position(symbol)
        closed = _closing_quantity(position.quantity, side, quantity)
        realized = closed * (price - position.entry_price) * (1 if position.quantity > 0 else -1)
        fee = quantity * price * self.settings.fee_rate
        time_ms = now_ms()
        position.apply(side.sign * quantity, price, time_ms)
        account.wallet_balance += realized - fee
        order = Order(
            id=next(self._order_ids),
            api_key=account.api_key,
            symbol=symbol,
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
        )
        trade = Trade(
            id=next(self._trade_ids),
            order_id=order.id,
            symbol=symbol,
            side=side,
            price=price,
            quantity=quantity,
            closed_qty=closed,
            realized_pnl=realized,
            fee=fee,
            time_ms=time_ms,
        )
        account.orders[order.id] = order
        account.trades.append(trade)
        return Fill(order, trade)

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
                time_ms=now_ms(),
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


def _decimal_or_none(raw: str) -> Decimal | None:
    try:
        value = Decimal(raw)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _validated_quantity(market: MarketSpec, raw: str, *, reduce_only: bool = False) -> Decimal:
    """Step and maximum always; the minimum only for orders that may open. A reduce-only order
    may close a remainder below the minimum (left by a partial stop or a partial manual close),
    which is the only way such a remainder can be closed at all."""
    quantity = _decimal_or_none(raw)
    if quantity is None:
        raise OrderRejected(RejectReason.BAD_PARAMETER, f"quantity {raw!r} is not a number")
    if quantity > market.max_qty:  # first: the remainder below is undefined for huge values
        raise OrderRejected(RejectReason.QTY_TOO_LARGE, f"quantity {quantity} is above the maximum {market.max_qty}")
    if quantity % market.qty_step:
        raise OrderRejected(
            RejectReason.QTY_PRECISION, f"quantity {quantity} is not a multiple of the step {market.qty_step}"
        )
    if quantity <= 0 or (not reduce_only and quantity < market.min_qty):
        raise OrderRejected(RejectReason.QTY_TOO_SMALL, f"quantity {quantity} is below the minimum {market.min_qty}")
    return quantity


def _reduce_only_quantity(position: Position, side: Side, quantity: Decimal) -> Decimal:
    """The executable size of a reduce-only order: capped to the position; rejected if it would not reduce."""
    if not _reduces(position.quantity, side):
        raise OrderRejected(
            RejectReason.REDUCE_ONLY_REJECTED,
            f"reduce-only {side} with position {position.quantity} would not reduce it",
        )
    return min(quantity, abs(position.quantity))


def _closing_quantity(current: Decimal, side: Side, quantity: Decimal) -> Decimal:
    """The part of a fill that closes an existing position (the rest opens or increases)."""
    return min(quantity, abs(current)) if _reduces(current, side) else ZERO


def _reduces(current: Decimal, side: Side) -> bool:
    """Whether a fill on ``side`` reduces a position of signed size ``current``."""
    return current * side.sign < 0
