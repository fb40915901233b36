"""Section 4: maintenance detection at scale.

For each size (10 k, 100 k, 1 M positions; quick: 10 k and 100 k) a scratch database is
migrated (egis.db.migrate.upgrade), loaded with COPY (bench.synthetic: a realistic mix plus
planted findings) and ANALYZEd. Then, each the median of a few runs after a warm-up:
- paper reconciliation detection, `egis.db.maintenance.paper_mismatches` (PAPER_MISMATCHES);
- phantom-short detection, `egis.db.maintenance.phantom_matches` (PHANTOM_MATCHES);
- the floor: ONE sequential scan of the table, `SELECT count(*) FROM positions` with index scans
  switched off for that statement.
At 10 k, a row-by-row phantom detection (one query per open short) for contrast. Every plan is
stored (EXPLAIN ANALYZE, JSON) with the indexes it uses. The planted findings must all be found,
and nothing else.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bench import synthetic
from bench.config import Sizes
from bench.db import scratch_database
from bench.env import BenchEnv
from bench.report import Row, SectionResult
from bench.stats import median
from egis.db import maintenance as mdb
from egis.db.schema import positions
from egis.rules import phantom, reconcile

NAME = "4 maintenance"
FLOOR = "SELECT count(*) FROM positions"
NO_INDEX_SCANS = ("enable_indexscan", "enable_indexonlyscan", "enable_bitmapscan")
QUERIES = {"paper": mdb.PAPER_MISMATCHES.text, "phantom": mdb.PHANTOM_MATCHES.text, "floor": FLOOR}


async def run(env: BenchEnv, sizes: Sizes) -> SectionResult:
    scales = []
    for rows in sizes.maintenance_rows:
        async with scratch_database(env, f"bench_maint_{rows}") as (url, engine):
            first = rows == sizes.maintenance_rows[0]
            scales.append(await _scale(url, engine, rows, sizes.maintenance_runs, row_by_row=first))
    counts = {
        "maintenance_missed": sum(s["missed"] for s in scales),
        "maintenance_unexpected": sum(s["unexpected"] for s in scales),
    }
    return SectionResult(NAME, _rows(scales), {"scales": scales}, counts)


async def _scale(url: str, engine: AsyncEngine, rows: int, runs: int, *, row_by_row: bool) -> dict[str, Any]:
    started = time.perf_counter()
    planted = await _load(url, rows)
    load_s = time.perf_counter() - started
    async with engine.connect() as conn:
        total = (await conn.execute(text(FLOOR))).scalar_one()
    timings = {
        "paper": await _median_ms(engine, mdb.paper_mismatches, runs),
        "phantom": await _median_ms(engine, mdb.phantom_matches, runs),
        "floor": await _median_ms(engine, _sequential_scan, runs),
    }
    async with engine.connect() as conn:
        pairs = await mdb.paper_mismatches(conn)
        matches = await mdb.phantom_matches(conn)
    plans = {name: await _explain(engine, sql, floor=name == "floor") for name, sql in QUERIES.items()}
    found_paper = Counter(kind for pair in pairs for kind in reconcile.kinds(pair))
    found_phantoms = {m["short_id"] for m in matches}
    result: dict[str, Any] = {
        "size": rows,
        "positions": total,
        "load_s": load_s,
        "median_ms": timings,
        "planted": {"paper": dict(planted.paper), "phantom": len(planted.phantom_short_ids)},
        "found": {"paper": dict(found_paper), "phantom": len(found_phantoms)},
        "missed": (planted.paper - found_paper).total() + len(planted.phantom_short_ids - found_phantoms),
        "unexpected": (found_paper - planted.paper).total() + len(found_phantoms - planted.phantom_short_ids),
        "indexes": {name: _indexes(plan) for name, plan in plans.items()},
        "seq_scans": {name: _seq_scans(plan) for name, plan in plans.items()},
        "plans": plans,
    }
    if row_by_row:
        result["row_by_row_phantom_ms"] = await _median_ms(engine, _phantoms_row_by_row, runs)
        async with engine.connect() as conn:
            result["row_by_row_agrees"] = set(await _phantoms_row_by_row(conn)) == found_phantoms
    return result


async def _load(url: str, rows: int) -> synthetic.Planted:
    """COPY the synthetic book into a freshly migrated database, then ANALYZE."""
    conn = await asyncpg.connect(url)
    planted = synthetic.Planted()
    try:
        for book in synthetic.generate(rows):
            if book.bots:
                await conn.copy_records_to_table("bots", records=book.bots, columns=synthetic.BOT_COLUMNS)
            await conn.copy_records_to_table("positions", records=book.positions, columns=synthetic.POSITION_COLUMNS)
            await conn.copy_records_to_table("paper_positions", records=book.paper, columns=synthetic.PAPER_COLUMNS)
            if book.planted.phantom_short_ids or book.planted.paper:
                planted = book.planted
        for table in ("positions", "paper_positions"):
            await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return planted


async def _median_ms(engine: AsyncEngine, query: Callable[[AsyncConnection], Awaitable[Any]], runs: int) -> float:
    """Median wall time of `query` over `runs` runs, after one warm-up run; each on its own connection."""
    samples = []
    for attempt in range(runs + 1):
        async with engine.connect() as conn:
            started = time.perf_counter()
            await query(conn)
            if attempt:
                samples.append((time.perf_counter() - started) * 1000)
    return median(samples)


async def _sequential_scan(conn: AsyncConnection) -> int:
    async with conn.begin():
        for setting in NO_INDEX_SCANS:
            await conn.execute(text(f"SET LOCAL {setting} = off"))
        return (await conn.execute(text(FLOOR))).scalar_one()


async def _phantoms_row_by_row(conn: AsyncConnection) -> list[int]:
    """The contrast: list the open Binance shorts, then one query per short for a matching long."""
    shorts = await conn.execute(
        select(positions).where(
            positions.c.exchange == phantom.EXCHANGE, positions.c.side == "short", positions.c.status == "open"
        )
    )
    found = []
    for short in shorts.mappings().all():
        match = await conn.execute(
            select(positions.c.id)
            .where(
                positions.c.bot == short["bot"],
                positions.c.symbol == short["symbol"],
                positions.c.side == "long",
                positions.c.status == "closed",
                positions.c.closed_at > short["created_at"] - phantom.WINDOW,
                positions.c.closed_at < short["created_at"] + phantom.WINDOW,
                positions.c.exit_price == short["entry_price"],
                positions.c.size_usd == short["size_usd"],
            )
            .limit(1)
        )
        if match.first() is not None:
            found.append(short["id"])
    return found


async def _explain(engine: AsyncEngine, sql: str, *, floor: bool) -> Any:
    async with engine.begin() as conn:
        if floor:
            for setting in NO_INDEX_SCANS:
                await conn.execute(text(f"SET LOCAL {setting} = off"))
        return (await conn.execute(text(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}"))).scalar_one()[0]


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    node = plan.get("Plan", plan)
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


def _indexes(plan: dict[str, Any]) -> list[str]:
    return sorted({node["Index Name"] for node in _nodes(plan) if "Index Name" in node})


def _seq_scans(plan: dict[str, Any]) -> list[str]:
    return sorted({node["Relation Name"] for node in _nodes(plan) if node["Node Type"] == "Seq Scan"})


def _rows(scales: list[dict[str, Any]]) -> list[Row]:
    floor = "one seq scan: count(*)"
    rows = []
    for s in scales:
        at, ms = f"@{_short(s['size'])}", s["median_ms"]
        rows.append(Row(NAME, f"paper reconcile detection {at} (ms)", ms["paper"], ms["floor"], floor))
        rows.append(Row(NAME, f"phantom-short detection {at} (ms)", ms["phantom"], ms["floor"], floor))
        if "row_by_row_phantom_ms" in s:
            contrast = "row by row: 1 query per open short"
            rows.append(
                Row(NAME, f"  phantom, set-based {at} (ms)", ms["phantom"], s["row_by_row_phantom_ms"], contrast)
            )
        for name in ("paper", "phantom"):
            seq = ", ".join(s["seq_scans"][name]) or "none"
            rows.append(Row(NAME, f"  {name} plan {at}: indexes", ", ".join(s["indexes"][name]), f"seq scans: {seq}"))
    for before, after in itertools.pairwise(scales):
        grow = f"{_short(before['size'])} -> {_short(after['size'])} rows"
        floor_growth = after["median_ms"]["floor"] / before["median_ms"]["floor"]
        for name, label in (("paper", "paper reconcile"), ("phantom", "phantom shorts")):
            growth = after["median_ms"][name] / before["median_ms"][name]
            rows.append(Row(NAME, f"{label} time growth, {grow}", growth, floor_growth, "seq scan growth"))
    planted = sum(sum(s["planted"]["paper"].values()) + s["planted"]["phantom"] for s in scales)
    found = sum(sum(s["found"]["paper"].values()) + s["found"]["phantom"] for s in scales)
    rows.append(Row(NAME, "planted findings found (paper + phantom, all sizes)", found, planted, "planted"))
    rows.append(Row(NAME, "  found but not planted", sum(s["unexpected"] for s in scales), 0, "must be 0"))
    return rows


def _short(rows: int) -> str:
    return f"{rows // 1_000_000}M" if rows >= 1_000_000 else f"{rows // 1000}k"
