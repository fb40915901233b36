"""Scheduled maintenance: exchange sync, paper reconciliation, phantom-short cleanup, schedules.
Real PostgreSQL, real Temporal, real ccxt against the simulator."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import ccxt.async_support as ccxt_async
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio.testing import WorkflowEnvironment

from activities.deps import Deps
from chaos import invariants
from egis import schedules
from egis.db import maintenance as mdb
from egis.db.schema import audit_events, bots, maintenance_runs, paper_positions, positions
from egis.exchanges.local import point_to_local
from egis.models import CloseRequest, Exchange, PositionResult
from egis.rules import phantom
from egis.rules.budget import available, reserved
from egis.simulator.control import SimulatorControl
from tests.conftest import ACCOUNTS, SIM_KEYS
from tests.lifecycle import Harness, eventually, harness

D = Decimal
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
_uid = itertools.count(1)


@pytest_asyncio.fixture
async def h(temporal_env: WorkflowEnvironment, deps: Deps) -> AsyncIterator[Harness]:
    deps.settings = deps.settings.model_copy(update={"sync_grace_seconds": 0})
    async with harness(temporal_env.client, deps) as built:
        yield built


async def counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        return {
            t.name: (await conn.execute(select(func.count()).select_from(t))).scalar_one()
            for t in (positions, paper_positions, audit_events, maintenance_runs)
        }


async def table_rows(engine: AsyncEngine, table: Any) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(select(table).order_by(table.c.id))).mappings()]


# ---------------------------------------------------------------- exchange sync
async def test_sync_closes_a_ghost_without_orders_and_reports_an_orphan(
    h: Harness, sim_control: SimulatorControl
) -> None:
    bot = await h.bot(Exchange.BYBIT)
    view = await h.open(bot)
    key, secret = SIM_KEYS["bybit"]
    await sim_control.close_position(key, "BTCUSDT", price="60500")  # closed behind our back
    # someone opens ETH by hand on the same account: an orphan
    ex = point_to_local(
        ccxt_async.bybit({"apiKey": key, "secret": secret, "enableRateLimit": False}), sim_control.base_url
    )
    try:
        await ex.load_markets()
        await ex.create_order("ETH/USDT:USDT", "market", "buy", "0.01", None, {"clientOrderId": "by-hand"})
    finally:
        await ex.close()

    (report,) = await h.client.sync(Exchange.BYBIT, ACCOUNTS["bybit"])
    assert report.found == {"ghost": 1, "orphan": 1, "quantity_drift": 0} and report.told == 1
    assert report.orphans == [{"symbol": "ETHUSDT", "side": "long", "quantity": "0.01"}]
    row = await eventually(lambda: _closed(h, view.position_id), timeout=15)
    assert row and row["exit_reason"] == "closed_on_exchange" and row["exit_price"] == D("60500")
    assert [o for o in await sim_control.orders(key) if o["reduce_only"]] == []  # zero close orders
    assert [p["symbol"] for p in await sim_control.positions(key)] == ["ETHUSDT"]  # the orphan is left alone
    runs = await table_rows(h.deps.engine, maintenance_runs)
    assert runs[-1]["kind"] == "exchange_sync" and runs[-1]["found"]["orphan"] == 1
    violations = await invariants.check(h.deps.engine, sim_control, {"sim-bybit": key})
    # exactly the orphan we planted: its position on the exchange, and its order unknown to us
    assert sorted(v.invariant for v in violations) == ["agrees_with_exchange", "one_order_per_client_id"]
    assert "ETHUSDT" in str(violations) and "by-hand" in str(violations)


async def _closed(h: Harness, position_id: int) -> dict[str, Any] | None:
    row = await h.deps.store.get_position(position_id)
    return row if row["status"] == "closed" else None


async def test_sync_records_quantity_drift_through_the_workflow(h: Harness, sim_control: SimulatorControl) -> None:
    bot = await h.bot(Exchange.BINANCEUSDM)
    view = await h.open(bot, symbol="CLOUDUSDT", usd="10")  # 76 CLOUD
    await sim_control.reduce_position(SIM_KEYS["binanceusdm"][0], "CLOUDUSDT", "26")
    (report,) = await h.client.sync(Exchange.BINANCEUSDM, ACCOUNTS["binanceusdm"])
    assert report.found["quantity_drift"] == 1 and report.drifts[0]["exchange"] == "50"

    async def adjusted() -> bool:
        row = await h.deps.store.get_position(view.position_id)
        return row["quantity"] - row["closed_quantity"] == D(50)

    assert await eventually(adjusted, timeout=15)
    assert (await h.deps.store.get_position(view.position_id))["status"] == "open"


async def test_a_scheduled_sync_closes_a_ghost_within_one_interval(h: Harness, sim_control: SimulatorControl) -> None:
    bot = await h.bot(Exchange.BYBIT)
    view = await h.open(bot)
    options = schedules.Options(sync_every=timedelta(seconds=2))
    await schedules.install(h.temporal, h.queue, await h.client.live_accounts(), options)
    try:
        await sim_control.close_position(SIM_KEYS["bybit"][0], "BTCUSDT")
        started = asyncio.get_running_loop().time()
        row = await eventually(lambda: _closed(h, view.position_id), timeout=12)
        elapsed = asyncio.get_running_loop().time() - started
        assert row and row["exit_reason"] == "closed_on_exchange"
        assert elapsed < 2 + 4, f"closed {elapsed:.1f}s after the exchange, for a 2 s sync interval"
        assert [o for o in await sim_control.orders(SIM_KEYS["bybit"][0]) if o["reduce_only"]] == []
    finally:
        for row in await schedules.list_schedules(h.temporal, h.queue):
            await h.temporal.get_schedule_handle(row["id"]).delete()


async def test_schedules_install_twice_gives_one_schedule_of_each_kind(h: Harness) -> None:
    await h.bot(Exchange.BYBIT)
    await h.bot(Exchange.BINANCEUSDM)
    accounts = await h.client.live_accounts()
    try:
        first = await schedules.install(h.temporal, h.queue, accounts, schedules.Options())
        second = await schedules.install(h.temporal, h.queue, accounts, schedules.Options(reconcile_fix=True))
        assert {o for _, o in first} == {"created"} and {o for _, o in second} == {"updated"}
        listed = await eventually(lambda: _listed(h, 4), timeout=15)
        assert sorted(r["id"].removeprefix(h.queue + "-") for r in listed) == [
            "cleanup-phantom-shorts",
            "reconcile-paper",
            "sync-binanceusdm-sim-binance",
            "sync-bybit-sim-bybit",
        ]
        assert "fixes" in next(r["note"] for r in listed if r["id"].endswith("reconcile-paper"))
        await schedules.control(h.temporal, h.queue, "reconcile-paper", "pause")
        paused = await eventually(lambda: _paused(h), timeout=15)
        assert paused == [f"{h.queue}-reconcile-paper"]
    finally:
        for row in await schedules.list_schedules(h.temporal, h.queue):
            await h.temporal.get_schedule_handle(row["id"]).delete()


async def _listed(h: Harness, n: int) -> list[dict[str, Any]] | None:
    rows = await schedules.list_schedules(h.temporal, h.queue)
    return rows if len(rows) == n else None


async def _paused(h: Harness) -> list[str] | None:
    rows = [r["id"] for r in await schedules.list_schedules(h.temporal, h.queue) if r["paused"]]
    return rows or None


# ---------------------------------------------------------------- paper reconciliation
async def add_bot(
    conn: AsyncConnection, name: str, exchange: str = "paper", budget: str = "1000", account: str | None = None
) -> None:
    await conn.execute(
        bots.insert().values(name=name, exchange=exchange, account=account or f"{exchange}-acct", budget_usd=D(budget))
    )


async def add_position(conn: AsyncConnection, **values: Any) -> int:
    row = {
        "uid": f"u{next(_uid)}",
        "bot": "alpha",
        "exchange": "paper",
        "account": "paper-acct",
        "symbol": "BTCUSDT",
        "side": "long",
        "status": "open",
        "quantity": D(1),
        "entry_price": D(100),
        "size_usd": D(100),
        "created_at": T0,
        "opened_at": T0,
    } | values
    if row["status"] in ("closed", "failed") and "closed_at" not in row:
        row["closed_at"] = T0 + timedelta(hours=1)
    return (await conn.execute(positions.insert().values(**row).returning(positions.c.id))).scalar_one()


async def add_paper(conn: AsyncConnection, **values: Any) -> int:
    row = {
        "account": "paper-acct",
        "symbol": "BTCUSDT",
        "side": "long",
        "status": "open",
        "quantity": D(1),
        "entry_price": D(100),
    } | values
    return (await conn.execute(paper_positions.insert().values(**row).returning(paper_positions.c.id))).scalar_one()


async def drifted_paper_book(engine: AsyncEngine) -> dict[str, int]:
    """One pair per mismatch kind, plus a consistent pair, as legacy code could leave them."""
    async with engine.begin() as conn:
        await add_bot(conn, "alpha", budget="800")  # 800.01 reserved: the seed's -0.01
        ok = await add_position(conn, symbol="OKUSDT")
        await add_paper(conn, position_id=ok, symbol="OKUSDT")
        ids = {
            "missing_on_paper": await add_position(conn, symbol="AUSDT", size_usd=D(300)),
            "closed_on_paper": await add_position(conn, symbol="BUSDT", size_usd=D("100.01")),
            "side_differs": await add_position(conn, symbol="CUSDT"),
            "quantity_differs": await add_position(conn, symbol="DUSDT", quantity=D(3)),
            "price_differs": await add_position(conn, symbol="EUSDT"),
            "closed_internally": await add_position(conn, symbol="FUSDT", status="closed", exit_price=D(105)),
        }
        await add_paper(
            conn,
            position_id=ids["closed_on_paper"],
            symbol="BUSDT",
            status="closed",
            exit_price=D(90),
            realized_pnl=D(-10),
            closed_at=T0,
        )
        await add_paper(conn, position_id=ids["side_differs"], symbol="CUSDT", side="short")
        await add_paper(conn, position_id=ids["quantity_differs"], symbol="DUSDT", quantity=D(2))
        await add_paper(conn, position_id=ids["price_differs"], symbol="EUSDT", entry_price=D("101.5"))
        await add_paper(conn, position_id=ids["closed_internally"], symbol="FUSDT")
        ids["missing_internal"] = await add_paper(conn, position_id=None, symbol="GUSDT")
    return ids


async def test_reconcile_detects_every_kind_dry_run_writes_only_its_report(h: Harness) -> None:
    ids = await drifted_paper_book(h.deps.engine)
    assert (await h.client.budget("alpha")).available_usd == D("-0.01")  # seed 000 §5: negative budget
    before_positions = await table_rows(h.deps.engine, positions)
    before_paper = await table_rows(h.deps.engine, paper_positions)
    before = await counts(h.deps.engine)

    report = await h.client.reconcile_paper(fix=False, debug=True, actor="test")
    assert report.mode == "dry_run" and report.repaired == 0
    assert report.found == {kind: 1 for kind in ids}
    assert len(report.debug) == 7 and any("consistent" not in line for line in report.debug)
    assert await table_rows(h.deps.engine, positions) == before_positions
    assert await table_rows(h.deps.engine, paper_positions) == before_paper
    assert await counts(h.deps.engine) == before | {"maintenance_runs": before["maintenance_runs"] + 1}


async def test_reconcile_fix_repairs_audits_and_a_second_fix_finds_nothing(h: Harness) -> None:
    ids = await drifted_paper_book(h.deps.engine)
    report = await h.client.reconcile_paper(fix=True, debug=False, actor="test")
    assert report.mode == "fix" and report.repaired == 7

    rows = {r["id"]: r for r in await table_rows(h.deps.engine, positions)}
    assert rows[ids["missing_on_paper"]]["status"] == "closed"
    assert rows[ids["missing_on_paper"]]["exit_price"] is None and rows[ids["missing_on_paper"]]["realized_pnl"] is None
    assert (rows[ids["closed_on_paper"]]["exit_price"], rows[ids["closed_on_paper"]]["realized_pnl"]) == (D(90), D(-10))
    assert rows[ids["side_differs"]]["exit_reason"] == "reconcile_side_differs"
    assert rows[ids["quantity_differs"]]["quantity"] == D(2) and rows[ids["quantity_differs"]]["status"] == "open"
    assert rows[ids["price_differs"]]["entry_price"] == D("101.5")
    paper = {p["symbol"]: p for p in await table_rows(h.deps.engine, paper_positions)}
    assert paper["FUSDT"]["status"] == "closed" and paper["FUSDT"]["exit_price"] == D(105)
    assert paper["GUSDT"]["status"] == "closed" and paper["CUSDT"]["status"] == "closed"

    async with h.deps.engine.connect() as conn:
        audited = (
            await conn.execute(
                select(audit_events.c.actor, audit_events.c.run_id).where(audit_events.c.run_id == report.run_id)
            )
        ).all()
    assert len(audited) == 8 and {a.actor for a in audited} == {"reconcile:test"}  # 7 repairs, side_differs is two

    again = await h.client.reconcile_paper(fix=True, debug=False, actor="test")
    assert again.found == {} and again.repaired == 0

    # every bot's available budget equals the budget recomputed from positions, and is not negative
    for bot in await h.client.list_bots():
        live = [
            r["size_usd"]
            for r in await table_rows(h.deps.engine, positions)
            if r["bot"] == bot.name and r["status"] in ("opening", "open", "closing")
        ]
        view = await h.client.budget(bot.name)
        assert view.available_usd == available(bot.budget_usd, reserved(live)) and view.available_usd >= 0


async def test_reconcile_sql_and_the_pure_rule_agree(engine: AsyncEngine) -> None:
    """What the set-based query returns is exactly what the rule names, row for row."""
    await drifted_paper_book(engine)
    async with engine.connect() as conn:
        pairs = await mdb.paper_mismatches(conn)
    from egis.rules.reconcile import kinds

    assert all(kinds(p) for p in pairs) and len(pairs) == 7


# ---------------------------------------------------------------- phantom shorts
LONG_CLOSE = T0 + timedelta(hours=2)


async def phantom_book(engine: AsyncEngine) -> dict[str, int]:
    """One closed Binance long, and shorts around each edge of the seed 000 rule."""
    async with engine.begin() as conn:
        for name, exchange in (("alpha", "binanceusdm"), ("beta", "binanceusdm"), ("gamma", "bybit")):
            await add_bot(conn, name, exchange, account=ACCOUNTS[exchange])
        # legacy rows (no workflow, no orders) on the simulator account, which holds nothing
        common = {"exchange": "binanceusdm", "account": ACCOUNTS["binanceusdm"], "size_usd": D(300)}
        await add_position(conn, **common, status="closed", exit_price=D(60000), closed_at=LONG_CLOSE)
        await add_position(
            conn,
            **common | {"exchange": "bybit"},
            bot="gamma",
            status="closed",
            exit_price=D(60000),
            closed_at=LONG_CLOSE,
            symbol="BTCUSDT",
        )
        short = common | {"side": "short", "entry_price": D(60000), "status": "open"}
        ids = {
            "match_2.9s": await add_position(
                conn, **short, symbol="BTCUSDT", created_at=LONG_CLOSE + timedelta(seconds=2.9)
            ),
            "match_qty_0": await add_position(conn, **short, symbol="ETHUSDT", quantity=D(0), created_at=LONG_CLOSE),
            "gap_3.1s": await add_position(
                conn, **short, symbol="SOLUSDT", created_at=LONG_CLOSE - timedelta(seconds=3.1)
            ),
            "entry_differs": await add_position(
                conn, **short | {"entry_price": D(60001)}, symbol="XRPUSDT", created_at=LONG_CLOSE
            ),
            "size_differs": await add_position(
                conn, **short | {"size_usd": D("300.01")}, symbol="ADAUSDT", created_at=LONG_CLOSE
            ),
            "other_bot": await add_position(conn, **short, bot="beta", symbol="BTCUSDT", created_at=LONG_CLOSE),
            "other_exchange": await add_position(
                conn, **short | {"exchange": "bybit"}, bot="gamma", symbol="BTCUSDT", created_at=LONG_CLOSE
            ),
        }
        # each probing short needs its own closed long in its symbol (same bot) except the negative cases
        for symbol in ("ETHUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT"):
            await add_position(
                conn, **common, symbol=symbol, status="closed", exit_price=D(60000), closed_at=LONG_CLOSE
            )
        await add_position(conn, **common, symbol="DOTUSDT", status="closed", exit_price=D(60000), closed_at=LONG_CLOSE)
        ids["other_symbol"] = await add_position(conn, **short, symbol="LTCUSDT", created_at=LONG_CLOSE)
    return ids


async def test_cleanup_rule_edges_dry_run_and_confirm_twice(h: Harness) -> None:
    ids = await phantom_book(h.deps.engine)
    before_rows = await table_rows(h.deps.engine, positions)
    dry = await h.client.cleanup_phantom_shorts(confirm=False, debug=True, actor="test")
    assert sorted(r["short_id"] for r in dry.rows) == sorted([ids["match_2.9s"], ids["match_qty_0"]])
    assert {r["verdict"] for r in dry.rows} == {"phantom"} and {r["action"] for r in dry.rows} == {"would close"}
    assert dry.found == {"phantom_short": 2, "real_position": 0, "exchange_holds": 0, "unverified": 0}
    assert await table_rows(h.deps.engine, positions) == before_rows  # dry run: only its report
    explained = "\n".join(dry.debug)
    assert "MATCH" in explained and "3.100s" in explained and "entry 60000 != long exit 60001" not in explained
    assert "entry 60001 != long exit 60000" in explained and "size $300.01 != long size $300" in explained

    first = await h.client.cleanup_phantom_shorts(confirm=True, debug=False, actor="test")
    second = await h.client.cleanup_phantom_shorts(confirm=True, debug=False, actor="test")
    assert first.repaired == 2 and second.repaired == 0 and sum(second.found.values()) == 0
    rows = {r["id"]: r for r in await table_rows(h.deps.engine, positions)}
    assert len(rows) == len(before_rows)  # rows are kept, never deleted
    for key in ("match_2.9s", "match_qty_0"):
        assert rows[ids[key]]["status"] == "closed" and rows[ids[key]]["exit_reason"] == "phantom_cleanup"
    for key in ("gap_3.1s", "entry_differs", "size_differs", "other_bot", "other_exchange", "other_symbol"):
        assert rows[ids[key]]["status"] == "open", key


@st.composite
def pair(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    gap = draw(st.sampled_from([-3.1, -3.0, -2.999, -0.5, 0, 1.0, 2.999, 3.0, 3.1]))
    short = {
        "bot": "alpha",
        "exchange": draw(st.sampled_from(["binanceusdm", "bybit"])),
        "symbol": "BTCUSDT",
        "side": "short",
        "status": "open",
        "created_at": LONG_CLOSE + timedelta(seconds=gap),
        "entry_price": draw(st.sampled_from([D(100), D("100.5")])),
        "size_usd": draw(st.sampled_from([D(50), D("50.01")])),
        "quantity": draw(st.sampled_from([D(0), D(1)])),
    }
    long = {
        "bot": draw(st.sampled_from(["alpha", "beta"])),
        "exchange": "binanceusdm",
        "symbol": draw(st.sampled_from(["BTCUSDT", "ETHUSDT"])),
        "side": "long",
        "status": draw(st.sampled_from(["closed", "open"])),
        "closed_at": LONG_CLOSE,
        "exit_price": D(100),
        "size_usd": D(50),
    }
    return short, long


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=pair())
async def test_phantom_sql_agrees_with_the_pure_rule(
    pair: tuple[dict[str, Any], dict[str, Any]], engine: AsyncEngine
) -> None:
    short, long = pair
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE positions, bots CASCADE"))
        for name in ("alpha", "beta"):
            await add_bot(conn, name, "binanceusdm")
        if long["status"] == "open":
            long = long | {"closed_at": None}
        long_id = await add_position(conn, **{k: v for k, v in long.items() if k != "closed_at" or v is not None})
        short_id = await add_position(conn, **short)
        found = await mdb.phantom_matches(conn)
    candidate = phantom.Candidate(
        short_id,
        short["bot"],
        short["exchange"],
        short["symbol"],
        "short",
        "open",
        short["created_at"],
        short["entry_price"],
        short["size_usd"],
    )
    other = phantom.ClosedLong(
        long_id,
        long["bot"],
        long["symbol"],
        "long",
        long["status"],
        long["closed_at"],
        long["exit_price"],
        long["size_usd"],
    )
    assert bool(found) == phantom.is_phantom(candidate, other), phantom.reasons(candidate, other)


async def test_a_reversal_matches_the_seed_rule_but_cleanup_never_closes_it(
    h: Harness, sim_control: SimulatorControl
) -> None:
    """Issue 11: a bot closes a long and at once opens a real short of the same size at the same
    price. Seed 000's rule matches the short exactly; it is a real position (opened by Egis's own
    filled OPEN order), so the dry run says so and --confirm leaves it open: the database still
    equals the exchange."""
    bot = await h.bot(Exchange.BINANCEUSDM)
    long = await h.open(bot, usd="120")
    await h.client.close_position(long.workflow_id, CloseRequest(reason="manual"))
    short = await h.open(bot, side="short", usd="120")
    assert short.status == "open"
    dry = await h.client.cleanup_phantom_shorts(confirm=False, debug=True, actor="test")
    (row,) = dry.rows
    assert row["short_id"] == short.position_id and row["long_id"] == long.position_id
    assert row["verdict"] == "real_position" and row["action"] == "left open"
    assert "real position opened by order eg" in row["reason"] and row["entry_price"] == "60000"
    assert any("real position opened by order" in line for line in dry.debug)
    confirmed = await h.client.cleanup_phantom_shorts(confirm=True, debug=False, actor="test")
    assert confirmed.repaired == 0 and confirmed.found["real_position"] == 1
    assert (await h.deps.store.get_position(short.position_id))["status"] == "open"
    key, _ = SIM_KEYS["binanceusdm"]
    assert [(p["symbol"], p["quantity"]) for p in await sim_control.positions(key)] == [("BTCUSDT", D("-0.002"))]
    (report,) = await h.client.sync(Exchange.BINANCEUSDM, ACCOUNTS["binanceusdm"])
    assert report.found == {"ghost": 0, "orphan": 0, "quantity_drift": 0}  # the DB equals the exchange


async def _legacy_phantom(h: Harness, account: str) -> int:
    """A seed 000 phantom as the legacy system left it: no workflow, no orders."""
    async with h.deps.engine.begin() as conn:
        await add_bot(conn, "legacy", "binanceusdm", account=account)
        common = {"bot": "legacy", "exchange": "binanceusdm", "account": account, "size_usd": D(120)}
        await add_position(conn, **common, status="closed", exit_price=D(60000), closed_at=LONG_CLOSE)
        return await add_position(
            conn, **common, side="short", entry_price=D(60000), quantity=D("0.002"), created_at=LONG_CLOSE
        )


async def test_a_legacy_match_the_exchange_holds_is_left_alone(h: Harness, sim_control: SimulatorControl) -> None:
    """A match Egis did not open is checked on the exchange first: a short the account holds and no
    other live position accounts for is reported as held and never closed; once it is gone from
    the exchange, the same row is a proven phantom and --confirm closes it."""
    short_id = await _legacy_phantom(h, ACCOUNTS["binanceusdm"])
    key, secret = SIM_KEYS["binanceusdm"]
    ex = point_to_local(
        ccxt_async.binanceusdm({"apiKey": key, "secret": secret, "enableRateLimit": False}), sim_control.base_url
    )
    try:
        await ex.load_markets()
        await ex.create_order("BTC/USDT:USDT", "market", "sell", "0.002", None, {"clientOrderId": "by-hand"})
    finally:
        await ex.close()
    held = await h.client.cleanup_phantom_shorts(confirm=True, debug=True, actor="test")
    (row,) = held.rows
    assert row["verdict"] == "exchange_holds" and row["action"] == "left open" and held.repaired == 0
    assert "the exchange holds a BTCUSDT short of 0.002" in row["reason"]
    assert (await h.deps.store.get_position(short_id))["status"] == "open"

    await sim_control.close_position(key, "BTCUSDT")
    gone = await h.client.cleanup_phantom_shorts(confirm=True, debug=False, actor="test")
    assert gone.repaired == 1 and gone.rows[0]["verdict"] == "phantom"
    assert (await h.deps.store.get_position(short_id))["exit_reason"] == "phantom_cleanup"


async def test_a_match_on_an_account_nobody_can_read_is_left_alone(h: Harness) -> None:
    short_id = await _legacy_phantom(h, "nobody-serves-this")
    report = await h.client.cleanup_phantom_shorts(confirm=True, debug=False, actor="test")
    (row,) = report.rows
    assert row["verdict"] == "unverified" and report.repaired == 0
    assert "no worker serves this account" in row["reason"]
    assert (await h.deps.store.get_position(short_id))["status"] == "open"


async def test_reconcile_fix_tells_a_running_workflow(h: Harness) -> None:
    bot = await h.bot(Exchange.PAPER)
    view = await h.open(bot)
    async with h.deps.engine.begin() as conn:  # the paper exchange closed it; the internal row never heard
        await conn.execute(
            paper_positions.update()
            .where(paper_positions.c.position_id == view.position_id)
            .values(status="closed", exit_price=D(61000), realized_pnl=D(2), closed_at=func.now())
        )
    report = await h.client.reconcile_paper(fix=True, debug=False, actor="test")
    assert report.found == {"closed_on_paper": 1} and report.told == 1
    result = await h.temporal.get_workflow_handle(view.workflow_id, result_type=PositionResult).result()
    assert result.status == "closed" and result.exit_reason == "reconcile_closed_on_paper"
    assert result.exit_price == D(61000) and result.realized_pnl == D(2)
