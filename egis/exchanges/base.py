"""The gateway interface the lifecycle needs, and the value types it speaks.

Three implementations: `CcxtGateway` (Binance USD-M and Bybit v5 through the real ccxt
client) and `PaperGateway` (fills in the database, one transaction with the internal rows).
Every value is a Decimal parsed from the exchange's own strings; ccxt's floats never enter.
Exchange failures surface as `ExchangeCallError`, which carries what the classification table
needs, so activities never import ccxt.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from egis.models import Exchange, Intent, OrderSide, Side
from egis.rules.classify import Classification, Operation, classify
from egis.rules.sizing import MarketRules


@dataclass(frozen=True)
class ExchangePosition:
    symbol: str
    side: Side
    quantity: Decimal
    entry_price: Decimal | None = None
    mark_price: Decimal | None = None


@dataclass(frozen=True)
class OrderRequest:
    intent: Intent
    symbol: str
    side: OrderSide
    quantity: Decimal
    reduce_only: bool
    client_order_id: str
    position_id: int | None = None  # our position, for exchanges that keep rows per position (paper)


@dataclass(frozen=True)
class OrderReport:
    """What the exchange says about one order: cumulative fill and its average price."""

    client_order_id: str
    exchange_order_id: str | None
    status: str  # filled | partially_filled | open | canceled | rejected
    filled_quantity: Decimal
    average_price: Decimal | None


@dataclass(frozen=True)
class Trade:
    trade_id: str
    order_id: str | None
    side: OrderSide
    price: Decimal
    quantity: Decimal
    realized_pnl: Decimal | None
    at: datetime
    kind: str = "trade"  # trade | liquidation | adl (auto-deleveraging)


@dataclass(frozen=True)
class Balance:
    currency: str
    total: Decimal
    free: Decimal | None


RecordFill = Callable[[AsyncConnection, OrderReport], Awaitable[None]]
"""Applies a fill to `orders`/`positions` on the given connection (see PaperGateway)."""


class Gateway(Protocol):
    exchange: Exchange
    account: str
    records_fills_atomically: bool
    """True when create_order applies `record` inside the exchange's own transaction (paper)."""

    async def load_markets(self) -> dict[str, MarketRules]: ...

    async def market(self, symbol: str) -> MarketRules: ...

    async def fetch_position(self, symbol: str, side: Side) -> ExchangePosition | None: ...

    async def fetch_symbol_positions(self, symbol: str) -> list[ExchangePosition]: ...

    async def fetch_positions(self) -> list[ExchangePosition]: ...

    async def create_order(self, request: OrderRequest, *, record: RecordFill | None = None) -> OrderReport: ...

    async def find_order(self, symbol: str, client_order_id: str) -> OrderReport | None: ...

    async def fetch_tickers(self, symbols: Sequence[str]) -> dict[str, Decimal]: ...

    async def fetch_closing_trades(
        self, symbol: str, side: Side, since: datetime, quantity: Decimal | None = None
    ) -> list[Trade]: ...

    async def check_backoff(self) -> None: ...

    async def position_mode(self, symbol: str = "BTCUSDT") -> str: ...

    async def fetch_balance(self) -> Balance: ...

    async def close(self) -> None: ...


_SIGNATURE = re.compile(r"(signature|sign)=[0-9a-fA-F]+")


class ExchangeCallError(Exception):
    """An exchange call failed. Carries the exception class names (MRO), the exchange's error
    code and the operation, which is all `egis.rules.classify` needs."""

    def __init__(
        self,
        exchange: Exchange,
        operation: Operation,
        error_names: Sequence[str],
        code: str | None,
        message: str,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.exchange = exchange
        self.operation = operation
        self.error_names = tuple(error_names)
        self.code = code
        self.message = _SIGNATURE.sub(r"\1=…", message)[:400]
        self.retry_after = retry_after  # seconds the venue asked us to wait (Retry-After, a ban)

    @property
    def error_name(self) -> str:
        return self.error_names[0] if self.error_names else "?"

    def classify(self, operation: Operation | None = None) -> Classification:
        return classify(self.exchange.value, self.error_names, self.code, operation or self.operation)

    def __str__(self) -> str:
        code = f" code {self.code}" if self.code is not None else ""
        return f"{self.exchange} {self.error_name}{code}: {self.message}"


class IncompleteRead(ExchangeCallError):
    """A paged read that could not be finished: the venue kept answering with more pages than the bound, or
    handed back a cursor it had already given. Nothing is concluded from the pages read so far: a partial list
    of open positions would make the missing ones look gone (ghosts). A read that failed, classified like an
    unknown exchange error (PERMANENT for a read: an operator must look)."""

    def __init__(self, exchange: Exchange, message: str) -> None:
        super().__init__(exchange, "read", ("IncompleteRead", "ExchangeError", "BaseError"), None, message)
