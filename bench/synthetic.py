"""Synthetic `bots`, `positions` and `paper_positions` rows for the maintenance benchmark.

A realistic mix, deterministic for a seed: most positions closed, a few failed, a small share
live (about 1 %: open, opening, closing), bots on Binance USD-M, Bybit and paper; every paper position
that is live or closed has its consistent `paper_positions` row. On top of that, planted
findings whose counts the benchmark checks:
- PAPER_PLANTED of each paper reconciliation kind (egis.rules.reconcile.ACTIONS);
- PHANTOMS phantom shorts (seed 000's rule, egis.rules.phantom), each with a near miss that
  must NOT match (same pair, but just outside the time window).
Random prices cannot match by accident: random exits have 2 decimals, random live entries 3
(ending in 7), planted pairs 4.

Rows are tuples in the column order of POSITION_COLUMNS / PAPER_COLUMNS, produced in chunks for
asyncpg's COPY (`copy_records_to_table`).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from egis.rules import phantom
from egis.rules.reconcile import ACTIONS

BOT_COLUMNS = ("name", "exchange", "account", "budget_usd")
POSITION_COLUMNS = (
    "id",
    "uid",
    "bot",
    "exchange",
    "account",
    "symbol",
    "side",
    "status",
    "quantity",
    "closed_quantity",
    "entry_price",
    "exit_price",
    "size_usd",
    "realized_pnl",
    "created_at",
    "opened_at",
    "closed_at",
    "exit_reason",
    "workflow_id",
    "updated_at",
)
PAPER_COLUMNS = (
    "id",
    "position_id",
    "account",
    "symbol",
    "side",
    "status",
    "quantity",
    "entry_price",
    "exit_price",
    "realized_pnl",
    "opened_at",
    "closed_at",
    "updated_at",
)
PAPER_PLANTED = 3
PHANTOMS = 5
SYMBOLS = tuple(f"S{i:02d}USDT" for i in range(40))
STATUS_WEIGHTS = {"closed": 970, "failed": 20, "open": 8, "opening": 1, "closing": 1}
EXCHANGE_CYCLE = ("binanceusdm",) * 9 + ("bybit",) * 7 + ("paper",) * 4  # by bot index: 45 / 35 / 20 %
ROWS_PER_BOT = 500
T0 = datetime(2026, 1, 1, tzinfo=UTC)
YEAR_S = 365 * 24 * 3600
ZERO = Decimal(0)


@dataclass
class Planted:
    paper: Counter[str] = field(default_factory=Counter)  # kind -> count
    phantom_short_ids: set[int] = field(default_factory=set)


@dataclass
class Book:
    """Everything to load, streamed in chunks."""

    bots: list[tuple[Any, ...]]
    positions: list[tuple[Any, ...]] = field(default_factory=list)
    paper: list[tuple[Any, ...]] = field(default_factory=list)
    planted: Planted = field(default_factory=Planted)


class _Generator:
    def __init__(self, rows: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.bots = [f"b{i:05d}" for i in range(max(20, rows // ROWS_PER_BOT))]
        self.exchange = {bot: EXCHANGE_CYCLE[i % len(EXCHANGE_CYCLE)] for i, bot in enumerate(self.bots)}
        self.free: dict[str, list[tuple[str, str, str]]] = {ex: [] for ex in set(EXCHANGE_CYCLE)}
        for bot in self.bots:  # (bot, symbol, side) slots: at most one live position each
            self.free[self.exchange[bot]] += [(bot, s, side) for s in SYMBOLS for side in ("long", "short")]
        for slots in self.free.values():
            self.rng.shuffle(slots)
        self.next_id = 1
        self.next_paper_id = 1
        self.quantities = [Decimal(self.rng.randint(1, 5000)) / 1000 for _ in range(512)]
        self.exits = [Decimal(self.rng.randint(100_00, 99_999_99)) / 100 for _ in range(4096)]
        self.entries = [Decimal(self.rng.randint(10_000, 9_999_999)) / 100 + Decimal("0.007") for _ in range(4096)]
        self.sizes = [Decimal(self.rng.randint(10_00, 5000_00)) / 100 for _ in range(512)]

    def account(self, bot: str) -> str:
        return f"{self.exchange[bot]}-{bot[:4]}"

    def bots_rows(self) -> list[tuple[Any, ...]]:
        return [(bot, self.exchange[bot], self.account(bot), Decimal(1_000_000)) for bot in self.bots]

    def position(
        self,
        bot: str,
        symbol: str,
        side: str,
        status: str,
        *,
        entry: Decimal | None = None,
        exit_price: Decimal | None = None,
        size: Decimal | None = None,
        created_at: datetime | None = None,
        closed_at: datetime | None = None,
    ) -> tuple[Any, ...]:
        """One position row in POSITION_COLUMNS order, consistent with every CHECK constraint."""
        rng = self.rng
        pid = self.next_id
        self.next_id += 1
        created = created_at or T0 + timedelta(seconds=rng.randrange(YEAR_S))
        quantity = ZERO if status in ("opening", "failed") else rng.choice(self.quantities)
        final = status in ("closed", "failed")
        if final and closed_at is None:
            closed_at = created + timedelta(seconds=rng.randrange(60, 7 * 24 * 3600))
        if status == "closed" and exit_price is None:
            exit_price = rng.choice(self.exits)
        if quantity and entry is None:
            entry = rng.choice(self.entries) if status != "closed" else rng.choice(self.exits)
        return (
            pid,
            f"u{pid:x}",
            bot,
            self.exchange[bot],
            self.account(bot),
            symbol,
            side,
            status,
            quantity,
            quantity if status == "closed" else ZERO,
            entry if quantity else None,
            exit_price if status == "closed" else None,
            size or rng.choice(self.sizes),
            None,
            created,
            None if status in ("opening", "failed") else created + timedelta(seconds=1),
            closed_at if final else None,
            ("manual" if status == "closed" else "open_failed") if final else None,
            f"pos-{bot}-{pid}",
            closed_at or created,
        )

    def paper_row(
        self, position: tuple[Any, ...] | None, *, status: str, side: str | None = None, **changes: Any
    ) -> tuple[Any, ...]:
        """The paper exchange's row for `position` (consistent unless `changes` say otherwise)."""
        pid = self.next_paper_id
        self.next_paper_id += 1
        p = dict(zip(POSITION_COLUMNS, position, strict=True)) if position is not None else {}
        row = {
            "id": pid,
            "position_id": p.get("id"),
            "account": p.get("account", "paper-orphan"),
            "symbol": p.get("symbol", SYMBOLS[0]),
            "side": side or p.get("side", "long"),
            "status": status,
            "quantity": p.get("quantity", Decimal(1)) - p.get("closed_quantity", ZERO) if status == "open" else ZERO,
            "entry_price": p.get("entry_price") or Decimal(100),
            "exit_price": p.get("exit_price") if status == "closed" else None,
            "realized_pnl": None,
            "opened_at": p.get("opened_at") or T0,
            "closed_at": (p.get("closed_at") or T0) if status == "closed" else None,
            "updated_at": T0,
        } | changes
        return tuple(row[c] for c in PAPER_COLUMNS)


def _status(rng: random.Random) -> str:
    return rng.choices(list(STATUS_WEIGHTS), weights=list(STATUS_WEIGHTS.values()))[0]


def generate(rows: int, seed: int = 7, chunk: int = 50_000) -> Iterator[Book]:
    """The bots, then the positions (and their paper rows) in chunks; the last chunk carries the
    planted findings and `Book.planted`. About `rows` positions in all."""
    gen = _Generator(rows, seed)
    yield Book(bots=gen.bots_rows())
    random_rows = rows - len(ACTIONS) * PAPER_PLANTED - 4 * PHANTOMS
    while gen.next_id <= random_rows:
        book = Book(bots=[])
        for _ in range(min(chunk, random_rows - gen.next_id + 1)):
            _random_position(gen, book)
        yield book
    yield _planted(gen)


def _random_position(gen: _Generator, book: Book) -> None:
    rng = gen.rng
    status = _status(rng)
    if status in ("open", "opening", "closing"):
        exchange = rng.choice(EXCHANGE_CYCLE)
        if not gen.free[exchange]:
            status = "closed"
        else:
            bot, symbol, side = gen.free[exchange].pop()
    if status in ("closed", "failed"):
        bot, symbol, side = rng.choice(gen.bots), rng.choice(SYMBOLS), rng.choice(("long", "short"))
    row = gen.position(bot, symbol, side, status)
    book.positions.append(row)
    if gen.exchange[bot] == "paper" and status in ("open", "closing", "closed"):
        book.paper.append(gen.paper_row(row, status="closed" if status == "closed" else "open"))


def _planted(gen: _Generator) -> Book:
    book = Book(bots=[])
    for kind in ACTIONS:
        for _ in range(PAPER_PLANTED):
            _plant_paper(gen, book, kind)
            book.planted.paper[kind] += 1
    for i in range(PHANTOMS):
        book.planted.phantom_short_ids.add(_plant_phantom(gen, book, i, gap=phantom.WINDOW / 3))
        _plant_phantom(gen, book, i, gap=phantom.WINDOW + timedelta(seconds=0.5))  # a near miss
    return book


def _plant_paper(gen: _Generator, book: Book, kind: str) -> None:
    if kind == "missing_internal":
        book.paper.append(gen.paper_row(None, status="open"))
        return
    if kind == "closed_internally":
        row = gen.position(gen.bots[EXCHANGE_CYCLE.index("paper")], SYMBOLS[0], "long", "closed")
        book.positions.append(row)
        book.paper.append(gen.paper_row(row, status="open", quantity=row[POSITION_COLUMNS.index("quantity")]))
        return
    bot, symbol, side = gen.free["paper"].pop()
    row = gen.position(bot, symbol, side, "open")
    book.positions.append(row)
    if kind == "missing_on_paper":
        return
    changes: dict[str, Any] = {
        "closed_on_paper": {"status": "closed"},
        "side_differs": {"side": "short" if side == "long" else "long"},
        "quantity_differs": {"quantity": row[POSITION_COLUMNS.index("quantity")] + 1},
        "price_differs": {"entry_price": row[POSITION_COLUMNS.index("entry_price")] + 1},
    }[kind]
    book.paper.append(gen.paper_row(row, **({"status": "open"} | changes)))


def _plant_phantom(gen: _Generator, book: Book, i: int, gap: timedelta) -> int:
    """A closed Binance long and an open short of the same bot and symbol, `gap` after its close,
    at its exit price and size. Returns the short's id."""
    bot, symbol, _ = next(s for s in gen.free["binanceusdm"] if s[2] == "short")
    gen.free["binanceusdm"].remove((bot, symbol, "short"))
    price = Decimal(gen.rng.randint(1_000_000, 99_999_999)) / 10_000 + Decimal("0.00005")
    size = Decimal(1000 + i)
    closed_at = T0 + timedelta(days=30 + i, seconds=gen.rng.randrange(3600))
    opened_at = closed_at - timedelta(hours=1)
    long = gen.position(
        bot, symbol, "long", "closed", exit_price=price, size=size, created_at=opened_at, closed_at=closed_at
    )
    short = gen.position(bot, symbol, "short", "open", entry=price, size=size, created_at=closed_at + gap)
    book.positions += [long, short]
    return short[0]
