"""The paper exchange: market orders fill at a real price source's last price, in the database.

Its own raw state is `paper_positions`, `paper_balances` and `paper_fills`. Each fill updates
that state AND applies the fill to `orders` / `positions` (through the `record` callback) in
ONE transaction, so the two can never drift apart (seed 000 §7). Like a futures account in
one-way mode it holds at most one open position per symbol; reduce-only orders can only
shrink it, and a reduce-only order with nothing to reduce is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from egis import faults
from egis.db.schema import paper_balances, paper_fills, paper_positions
from egis.exchanges.accounts import AccountConfig, PriceSource
from egis.exchanges.base import (
    Balance,
    ExchangeCallError,
    ExchangePosition,
    Gateway,
    OrderReport,
    OrderRequest,
    RecordFill,
    Trade,
)
from egis.models import Exchange, OrderSide, Side
from egis.rules.intent import pnl
from egis.rules.sizing import MarketRules, validate_quantity

REDUCE_ONLY_REJECTED = "reduce_only_rejected"
INSUFFICIENT_MARGIN = "insufficient_margin"
WOULD_NET = "opposite_position_open"


def _refuse(operation: str, names: list[str], code: str, message: str) -> ExchangeCallError:
    return ExchangeCallError(Exchange.PAPER, operation, [*names, "ExchangeError", "BaseError"], code, message)  # type: ignore[arg-type]


class PaperGateway:
    records_fills_atomically = True

    def __init__(self, account: str, config: AccountConfig, engine: AsyncEngine, prices: Gateway) -> None:
        self.exchange = Exchange.PAPER
        self.account = account
        self.config = config
        self.engine = engine
        self.prices = prices  # a public CcxtGateway (or simulator) for markets and last prices

    @staticmethod
    def default_price_source(config: AccountConfig) -> PriceSource:
        return config.price_source or PriceSource()

    async def load_markets(self) -> dict[str, MarketRules]:
        return await self.prices.load_markets()

    async def market(self, symbol: str) -> MarketRules:
        return await self.prices.market(symbol)

    # ------------------------------------------------------------ positions
    @staticmethod
    def _position(row: Any) -> ExchangePosition:
        return ExchangePosition(row.symbol, Side(row.side), row.quantity, row.entry_price, None)

    async def fetch_positions(self) -> list[ExchangePosition]:
        async with self.engine.connect() as conn:
            query = select(paper_positions).where(
                paper_positions.c.account == self.account, paper_positions.c.status == "open"
            )
            rows = await conn.execute(query)
            return [self._position(r) for r in rows if r.quantity > 0]

    async def fetch_symbol_positions(self, symbol: str) -> list[ExchangePosition]:
        return [p for p in await self.fetch_positions() if p.symbol == symbol]

    async def fetch_position(self, symbol: str, side: Side) -> ExchangePosition | None:
        return next((p for p in await self.fetch_symbol_positions(symbol) if p.side is side), None)

    # ------------------------------------------------------------ orders
    async def create_order(self, request: OrderRequest, *, record: RecordFill | None = None) -> OrderReport:
        rules = await self.market(request.symbol)
        validate_quantity(request.quantity, rules, reduce_only=request.reduce_only)
        price = (await self.prices.fetch_tickers([request.symbol])).get(request.symbol)
        if price is None:
            raise _refuse(request.intent.value, ["BadSymbol"], "no_price", f"no price for {request.symbol}")
        async with self.engine.begin() as conn:
            report = await self._fill(conn, request, price)
            faults.hit("after_paper_write")
            if record is not None:
                await record(conn, report)
        return report

    async def _fill(self, conn: AsyncConnection, request: OrderRequest, price: Decimal) -> OrderReport:
        done = (
            await conn.execute(select(paper_fills).where(paper_fills.c.client_order_id == request.client_order_id))
        ).first()
        if done is not None:  # the same client order id again: the earlier fill stands
            return OrderReport(request.client_order_id, f"paper-{done.id}", "filled", done.quantity, done.price)
        balance = await self._locked_balance(conn)
        row = (
            await conn.execute(
                select(paper_positions)
                .where(
                    paper_positions.c.account == self.account,
                    paper_positions.c.symbol == request.symbol,
                    paper_positions.c.status == "open",
                )
                .with_for_update()
            )
        ).first()
        buy = request.side is OrderSide.BUY
        if request.reduce_only:
            if row is None or (row.side == Side.LONG.value) == buy:
                raise _refuse(
                    request.intent.value,
                    ["InvalidOrder"],
                    REDUCE_ONLY_REJECTED,
                    f"reduce-only {request.side} {request.symbol}: no position to reduce",
                )
            return await self._reduce(conn, request, row, price, balance)
        return await self._open(conn, request, row, price, balance)

    async def _locked_balance(self, conn: AsyncConnection) -> Decimal:
        await conn.execute(
            pg_insert(paper_balances)
            .values(account=self.account, balance=self.config.starting_balance)
            .on_conflict_do_nothing()
        )
        return (
            await conn.execute(
                select(paper_balances.c.balance).where(paper_balances.c.account == self.account).with_for_update()
            )
        ).scalar_one()

    async def _open(
        self, conn: AsyncConnection, request: OrderRequest, row: Any, price: Decimal, balance: Decimal
    ) -> OrderReport:
        side = Side.LONG if request.side is OrderSide.BUY else Side.SHORT
        if row is not None and row.side != side.value:
            raise _refuse(
                request.intent.value,
                ["InvalidOrder"],
                WOULD_NET,
                f"{request.symbol}: a {row.side} position is open; one-way mode would net them",
            )
        used = (
            await conn.execute(
                select(func.coalesce(func.sum(paper_positions.c.quantity * paper_positions.c.entry_price), 0)).where(
                    paper_positions.c.account == self.account, paper_positions.c.status == "open"
                )
            )
        ).scalar_one()
        if used + request.quantity * price > balance:
            raise _refuse(
                request.intent.value,
                ["InsufficientFunds"],
                INSUFFICIENT_MARGIN,
                f"paper margin insufficient: balance {balance}, in use {used}, order {request.quantity * price}",
            )
        if row is None:
            paper_id = (
                await conn.execute(
                    paper_positions.insert()
                    .values(
                        position_id=request.position_id,
                        account=self.account,
                        symbol=request.symbol,
                        side=side.value,
                        status="open",
                        quantity=request.quantity,
                        entry_price=price,
                    )
                    .returning(paper_positions.c.id)
                )
            ).scalar_one()
        else:
            paper_id = row.id
            total = row.quantity + request.quantity
            await conn.execute(
                update(paper_positions)
                .where(paper_positions.c.id == row.id)
                .values(
                    quantity=total,
                    entry_price=(row.quantity * row.entry_price + request.quantity * price) / total,
                    updated_at=func.now(),
                )
            )
        return await self._record_fill(conn, request, paper_id, request.quantity, price, None)

    async def _reduce(
        self, conn: AsyncConnection, request: OrderRequest, row: Any, price: Decimal, balance: Decimal
    ) -> OrderReport:
        quantity = min(request.quantity, row.quantity)  # reduce-only never exceeds the position
        realized = pnl(Side(row.side), row.entry_price, price, quantity)
        remaining = row.quantity - quantity
        closed = remaining == 0
        await conn.execute(
            update(paper_positions)
            .where(paper_positions.c.id == row.id)
            .values(
                quantity=row.quantity if closed else remaining,
                status="closed" if closed else "open",
                exit_price=price if closed else None,
                realized_pnl=(row.realized_pnl or Decimal(0)) + realized,
                closed_at=func.now() if closed else None,
                updated_at=func.now(),
            )
        )
        await conn.execute(
            update(paper_balances)
            .where(paper_balances.c.account == self.account)
            .values(balance=balance + realized, updated_at=func.now())
        )
        return await self._record_fill(conn, request, row.id, quantity, price, realized)

    async def _record_fill(
        self,
        conn: AsyncConnection,
        request: OrderRequest,
        paper_id: int,
        quantity: Decimal,
        price: Decimal,
        realized: Decimal | None,
    ) -> OrderReport:
        fill_id = (
            await conn.execute(
                paper_fills.insert()
                .values(
                    account=self.account,
                    client_order_id=request.client_order_id,
                    paper_position_id=paper_id,
                    symbol=request.symbol,
                    side=request.side.value,
                    reduce_only=request.reduce_only,
                    quantity=quantity,
                    price=price,
                    realized_pnl=realized,
                )
                .returning(paper_fills.c.id)
            )
        ).scalar_one()
        return OrderReport(request.client_order_id, f"paper-{fill_id}", "filled", quantity, price)

    async def find_order(self, symbol: str, client_order_id: str) -> OrderReport | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(paper_fills).where(paper_fills.c.client_order_id == client_order_id))
            ).first()
        if row is None:
            return None
        return OrderReport(client_order_id, f"paper-{row.id}", "filled", row.quantity, row.price)

    # ------------------------------------------------------------ prices, trades, balance
    async def fetch_tickers(self, symbols: Sequence[str]) -> dict[str, Decimal]:
        return await self.prices.fetch_tickers(symbols)

    async def check_backoff(self) -> None:
        """The paper exchange is our own database: it never throttles."""

    async def position_mode(self, symbol: str = "BTCUSDT") -> str:
        """Like a futures account in one-way mode: one position per symbol."""
        return "one_way"

    async def fetch_closing_trades(
        self, symbol: str, side: Side, since: datetime, quantity: Decimal | None = None
    ) -> list[Trade]:
        closing = OrderSide.SELL if side is Side.LONG else OrderSide.BUY
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(paper_fills)
                .where(
                    paper_fills.c.account == self.account,
                    paper_fills.c.symbol == symbol,
                    paper_fills.c.side == closing.value,
                    paper_fills.c.reduce_only,
                    paper_fills.c.created_at >= since,
                )
                .order_by(paper_fills.c.id.desc())  # newest first, like the venues' gateway
            )
            return [
                Trade(str(r.id), f"paper-{r.id}", closing, r.price, r.quantity, r.realized_pnl, r.created_at)
                for r in rows
            ]

    async def fetch_balance(self) -> Balance:
        async with self.engine.begin() as conn:
            balance = await self._locked_balance(conn)
        return Balance("USDT", balance, None)

    async def close(self) -> None:
        await self.prices.close()
