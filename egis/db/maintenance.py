"""Maintenance queries and repairs: exchange sync, paper reconciliation, phantom-short cleanup.

Detection is set-based SQL on partial indexes, one query per run (never a loop over rows).
Repairs touch only the rows found, each audited with the run it belongs to; every run stores
its report in `maintenance_runs`.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.ext.asyncio import AsyncConnection

from egis.db import store
from egis.db.schema import maintenance_runs, paper_positions, positions
from egis.db.store import jsonable
from egis.rules import phantom
from egis.rules.reconcile import Pair
from egis.rules.sync import OurPosition


# ---------------------------------------------------------------- runs
async def start_run(conn: AsyncConnection, kind: str, mode: str, actor: str, scope: str | None = None) -> int:
    return (
        await conn.execute(
            maintenance_runs.insert()
            .values(kind=kind, mode=mode, actor=actor, scope=scope)
            .returning(maintenance_runs.c.id)
        )
    ).scalar_one()


async def latest_runs(conn: AsyncConnection, kind: str) -> list[dict[str, Any]]:
    """The most recent finished run of `kind` per scope (e.g. the last sync of each account)."""
    rows = await conn.execute(
        select(maintenance_runs)
        .ext(distinct_on(maintenance_runs.c.scope))
        .where(maintenance_runs.c.kind == kind, maintenance_runs.c.finished_at.is_not(None))
        .order_by(maintenance_runs.c.scope, maintenance_runs.c.started_at.desc())
    )
    return [dict(r) for r in rows.mappings()]


async def finish_run(conn: AsyncConnection, run_id: int, found: dict[str, int], report: list[dict[str, Any]]) -> None:
    await conn.execute(
        update(maintenance_runs)
        .where(maintenance_runs.c.id == run_id)
        .values(finished_at=func.now(), found=found, report=jsonable(report))
    )


# ---------------------------------------------------------------- exchange sync
async def account_positions(conn: AsyncConnection, exchange: str, account: str) -> list[OurPosition]:
    """Our live positions on one exchange account (index: exchange, account, status)."""
    rows = await conn.execute(
        select(
            positions.c.id,
            positions.c.workflow_id,
            positions.c.symbol,
            positions.c.side,
            positions.c.status,
            (positions.c.quantity - positions.c.closed_quantity).label("open_quantity"),
            positions.c.opened_at,
        ).where(
            positions.c.exchange == exchange,
            positions.c.account == account,
            positions.c.status.in_(["opening", "open", "closing"]),
        )
    )
    return [
        OurPosition(r.id, r.workflow_id, r.symbol, r.side, r.status, Decimal(r.open_quantity), r.opened_at)
        for r in rows
    ]


# ---------------------------------------------------------------- paper reconciliation
PAPER_MISMATCHES = text("""
WITH live AS (
    SELECT id, side, status, quantity - closed_quantity AS open_quantity, entry_price
    FROM positions
    WHERE exchange = 'paper' AND status IN ('open', 'closing')
)
SELECT l.id AS position_id, pp.id AS paper_id,
       l.status AS internal_status, l.side AS internal_side,
       l.open_quantity AS internal_open_quantity, l.entry_price AS internal_entry,
       pp.status AS paper_status, pp.side AS paper_side, pp.quantity AS paper_quantity, pp.entry_price AS paper_entry
FROM live l
LEFT JOIN LATERAL (  -- position_id is unique: one index probe per live position, never a scan
    SELECT * FROM paper_positions p WHERE p.position_id = l.id LIMIT 1
) pp ON true
WHERE pp.id IS NULL
   OR pp.status <> 'open'
   OR pp.side <> l.side
   OR pp.quantity <> l.open_quantity
   OR pp.entry_price IS DISTINCT FROM l.entry_price
UNION ALL
SELECT p.id, o.id, p.status, p.side, p.quantity - p.closed_quantity, p.entry_price,
       o.status, o.side, o.quantity, o.entry_price
FROM paper_positions o
LEFT JOIN positions p ON p.id = o.position_id
WHERE o.status = 'open'
  AND (p.id IS NULL OR p.status NOT IN ('open', 'closing'))
ORDER BY 1 NULLS LAST, 2
""")
"""Every internal/paper pair that disagrees, in one statement (partial indexes:
ix_positions_live_paper, ix_paper_positions_open, and the unique paper_positions.position_id)."""


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(format(Decimal(value), "f"))


async def paper_mismatches(conn: AsyncConnection) -> list[Pair]:
    rows = (await conn.execute(PAPER_MISMATCHES)).mappings().all()
    return [
        Pair(
            position_id=r["position_id"],
            paper_id=r["paper_id"],
            internal_status=r["internal_status"],
            internal_side=r["internal_side"],
            internal_open_quantity=_dec(r["internal_open_quantity"]),
            internal_entry=_dec(r["internal_entry"]),
            paper_status=r["paper_status"],
            paper_side=r["paper_side"],
            paper_quantity=_dec(r["paper_quantity"]),
            paper_entry=_dec(r["paper_entry"]),
        )
        for r in rows
    ]


async def _flatten_paper(
    conn: AsyncConnection, paper_id: int, exit_price: Decimal | None, *, actor: str, reason: str, run_id: int
) -> None:
    before = (
        (await conn.execute(select(paper_positions).where(paper_positions.c.id == paper_id).with_for_update()))
        .mappings()
        .one()
    )
    values = {"status": "closed", "exit_price": exit_price, "closed_at": func.now()}
    await store.mutate(
        conn,
        paper_positions,
        before,
        values,
        actor=actor,
        action="paper_position_flattened",
        reason=reason,
        run_id=run_id,
    )


async def repair_pair(conn: AsyncConnection, pair: Pair, kind: str, *, actor: str, run_id: int) -> str | None:
    """Apply the documented repair for `kind` (egis.rules.reconcile.ACTIONS). Returns the
    workflow id to tell when an internal position was closed."""
    why = f"paper reconciliation: {kind}"
    closed: dict[str, Any] | None = None
    if kind in ("missing_on_paper", "side_differs"):
        assert pair.position_id is not None
        closed = await store.close_without_order(
            conn,
            pair.position_id,
            exit_reason=f"reconcile_{kind}",
            exit_price=None,
            realized_pnl=None,
            actor=actor,
            why=why,
            run_id=run_id,
        )
        if kind == "side_differs" and pair.paper_id is not None:
            await _flatten_paper(conn, pair.paper_id, None, actor=actor, reason=why, run_id=run_id)
    elif kind == "closed_on_paper":
        assert pair.position_id is not None and pair.paper_id is not None
        paper = (await conn.execute(select(paper_positions).where(paper_positions.c.id == pair.paper_id))).one()
        closed = await store.close_without_order(
            conn,
            pair.position_id,
            exit_reason="reconcile_closed_on_paper",
            exit_price=paper.exit_price,
            realized_pnl=paper.realized_pnl,
            actor=actor,
            why=why,
            run_id=run_id,
        )
    elif kind in ("missing_internal", "closed_internally"):
        assert pair.paper_id is not None
        exit_price = None
        if pair.position_id is not None:
            exit_price = (
                await conn.execute(select(positions.c.exit_price).where(positions.c.id == pair.position_id))
            ).scalar_one()
        await _flatten_paper(conn, pair.paper_id, exit_price, actor=actor, reason=why, run_id=run_id)
    elif kind == "quantity_differs":
        assert pair.position_id is not None and pair.paper_quantity is not None
        if pair.paper_quantity > 0:
            await store.adjust_open_quantity(
                conn, pair.position_id, pair.paper_quantity, actor=actor, reason=why, run_id=run_id
            )
        else:
            closed = await store.close_without_order(
                conn,
                pair.position_id,
                exit_reason="reconcile_missing_on_paper",
                exit_price=None,
                realized_pnl=None,
                actor=actor,
                why=why,
                run_id=run_id,
            )
    elif kind == "price_differs":
        assert pair.position_id is not None
        before = await store.get_position(conn, pair.position_id, lock=True)
        await store.mutate(
            conn,
            positions,
            before,
            {"entry_price": pair.paper_entry},
            actor=actor,
            action="entry_price_adjusted",
            reason=why,
            run_id=run_id,
        )
    else:
        raise ValueError(f"unknown reconciliation kind {kind!r}")
    return closed["workflow_id"] if closed is not None else None


# ---------------------------------------------------------------- phantom shorts
PHANTOM_MATCHES = text(f"""
SELECT s.id AS short_id, s.workflow_id AS short_workflow_id, s.bot, s.exchange, s.account, s.symbol,
       s.quantity AS short_quantity, s.closed_quantity AS short_closed_quantity,
       s.created_at AS short_created_at, s.entry_price, s.size_usd,
       l.id AS long_id, l.closed_at AS long_closed_at, l.exit_price AS long_exit_price,
       o.client_order_id AS opened_by
FROM positions s
JOIN LATERAL (
    SELECT l.id, l.closed_at, l.exit_price
    FROM positions l
    WHERE l.bot = s.bot AND l.symbol = s.symbol AND l.side = 'long' AND l.status = 'closed'
      AND l.closed_at > s.created_at - interval '{phantom.WINDOW.total_seconds()} seconds'
      AND l.closed_at < s.created_at + interval '{phantom.WINDOW.total_seconds()} seconds'
      AND l.exit_price = s.entry_price
      AND l.size_usd = s.size_usd
    ORDER BY abs(extract(epoch FROM l.closed_at - s.created_at))
    LIMIT 1
) l ON true
LEFT JOIN LATERAL (  -- the filled OPEN order that created it, if Egis opened it (ix_orders_position_id)
    SELECT o.client_order_id FROM orders o
    WHERE o.position_id = s.id AND o.intent = 'open' AND o.status IN ('filled', 'partially_filled')
      AND o.filled_quantity > 0
    ORDER BY o.id LIMIT 1
) o ON true
WHERE s.exchange = '{phantom.EXCHANGE}' AND s.side = 'short' AND s.status = 'open'
ORDER BY s.id
""")
"""Seed 000's rule, set-based: open Binance shorts (partial index ix_positions_open_shorts), each
probed for its closest matching closed long (partial index ix_positions_closed_longs), with the
client id of the filled OPEN order that created it, if any (then it is a real position)."""


async def phantom_matches(conn: AsyncConnection) -> list[dict[str, Any]]:
    return [_plain_row(r) for r in (await conn.execute(PHANTOM_MATCHES)).mappings()]


def _plain_row(row: Any) -> dict[str, Any]:
    """Raw `text()` rows bypass FixedNumeric: asyncpg reads NUMERIC 60000 as Decimal('6E+4')."""
    return {k: _dec(v) if isinstance(v, Decimal) else v for k, v in row.items()}


async def live_shorts(conn: AsyncConnection, exchange: str, accounts: list[str]) -> list[dict[str, Any]]:
    """Every live short of these accounts (what may account for a short an exchange holds)."""
    rows = await conn.execute(
        select(
            positions.c.id,
            positions.c.account,
            positions.c.symbol,
            (positions.c.quantity - positions.c.closed_quantity).label("open_quantity"),
        ).where(
            positions.c.exchange == exchange,
            positions.c.account.in_(accounts),
            positions.c.side == "short",
            positions.c.status.in_(["opening", "open", "closing"]),
        )
    )
    return [dict(r) for r in rows.mappings()]


async def phantom_accounts(conn: AsyncConnection) -> list[str]:
    """Accounts holding a seed-rule match that Egis did not open itself: the exchange must be read."""
    return sorted({m["account"] for m in await phantom_matches(conn) if m["opened_by"] is None})


DEBUG_WINDOW = timedelta(days=1)


async def phantom_debug(conn: AsyncConnection) -> list[str]:
    """For --debug: every open short, and why each nearby closed long of its bot/symbol matched or not."""
    shorts = (
        (await conn.execute(select(positions).where(positions.c.side == "short", positions.c.status == "open")))
        .mappings()
        .all()
    )
    lines = []
    for s in shorts:
        candidate = phantom.Candidate(
            s["id"],
            s["bot"],
            s["exchange"],
            s["symbol"],
            s["side"],
            s["status"],
            s["created_at"],
            s["entry_price"],
            s["size_usd"],
        )
        longs = (
            (
                await conn.execute(
                    select(positions).where(
                        positions.c.bot == s["bot"],
                        positions.c.side == "long",
                        positions.c.closed_at.between(s["created_at"] - DEBUG_WINDOW, s["created_at"] + DEBUG_WINDOW),
                    )
                )
            )
            .mappings()
            .all()
        )
        head = f"short {s['id']} ({s['bot']} {s['exchange']} {s['symbol']} entry {s['entry_price']} ${s['size_usd']})"
        if not longs:
            lines.append(f"{head}: no match: no long of this bot closed within a day of it")
        for row in longs:
            other = phantom.ClosedLong(
                row["id"],
                row["bot"],
                row["symbol"],
                row["side"],
                row["status"],
                row["closed_at"],
                row["exit_price"],
                row["size_usd"],
            )
            why = phantom.reasons(candidate, other)
            verdict = "MATCH" if not why else "no match: " + "; ".join(why)
            lines.append(f"{head} vs long {row['id']}: {verdict}")
    return lines


async def close_phantom(conn: AsyncConnection, match: dict[str, Any], *, actor: str, run_id: int) -> dict[str, Any]:
    return await store.close_without_order(
        conn,
        match["short_id"],
        exit_reason="phantom_cleanup",
        exit_price=None,
        realized_pnl=None,
        actor=actor,
        why=f"phantom short of long {match['long_id']} (seed 000 rule)",
        run_id=run_id,
    )
