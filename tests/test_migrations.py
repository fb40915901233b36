"""Migrations upgrade and downgrade an empty database, and produce exactly the declared schema."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from egis.db import migrate
from egis.db.engine import make_engine
from egis.db.schema import metadata
from egis.stack.postgres import EmbeddedPostgres
from tests.conftest import create_database, drop_database

TABLES = {
    "bots",
    "positions",
    "orders",
    "paper_positions",
    "paper_balances",
    "paper_fills",
    "audit_events",
    "maintenance_runs",
    "exchange_backoffs",
    "stream_status",
}


async def test_upgrade_then_downgrade_an_empty_database(pg_server: EmbeddedPostgres) -> None:
    url = await create_database(pg_server, template=None)
    engine = make_engine(url, pool_size=1)
    try:
        assert await migrate.current_revision(engine) is None
        await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            assert tables >= TABLES
            diffs = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), metadata)
            )
        assert diffs == [], f"the migrations and egis/db/schema.py disagree: {diffs}"
        await migrate.upgrade(engine)  # a second run is a no-op
        await migrate.downgrade(engine, "base")
        async with engine.connect() as conn:
            left = set(await conn.run_sync(lambda c: inspect(c).get_table_names())) - {"alembic_version"}
            assert left == set()
            assert (await conn.execute(text("SELECT count(*) FROM alembic_version"))).scalar_one() == 0
        await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()
    finally:
        await engine.dispose()
        await drop_database(pg_server, url)


async def test_database_constraints_hold_even_if_code_is_wrong(pg_server: EmbeddedPostgres) -> None:
    """The constraints the issue lists are enforced by PostgreSQL itself."""
    url = await create_database(pg_server)
    engine = make_engine(url, pool_size=1)
    order = "INSERT INTO orders (position_id, intent, exchange, account, symbol, side, quantity, reduce_only, "
    order += "client_order_id, status) VALUES ({}, '{}', 'paper', 'p', 'BTCUSDT', '{}', {}, {}, '{}', 'pending')"
    position = "INSERT INTO positions (uid, bot, exchange, account, symbol, side, status, quantity, size_usd) "
    position += "VALUES ('{}', 'alpha', 'paper', 'p', 'BTCUSDT', 'long', '{}', {}, 10)"
    statements = {
        "close order without position": order.format("NULL", "close", "sell", 1, "true", "c1"),
        "close order not reduce-only": order.format(1, "close", "sell", 1, "false", "c2"),
        "zero order quantity": order.format(1, "open", "buy", 0, "false", "c3"),
        "negative position quantity": position.format("u2", "open", -1),
        "second live position": position.format("u3", "opening", 0),
        "duplicate client order id": order.format(1, "open", "buy", 1, "false", "dup"),
    }
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO bots (name, exchange, account, budget_usd) VALUES ('alpha', 'paper', 'p', 1)")
            )
            await conn.execute(text(position.format("u1", "open", 0)))
            await conn.execute(text(order.format(1, "open", "buy", 1, "false", "dup")))
        refused = []
        for name, sql in statements.items():
            try:
                async with engine.begin() as conn:
                    await conn.execute(text(sql))
            except Exception:
                refused.append(name)
        assert refused == list(statements), f"accepted: {set(statements) - set(refused)}"
    finally:
        await engine.dispose()
        await drop_database(pg_server, url)


UPGRADE_AT = """
import asyncio, logging, os, pathlib, sys, time
from egis.db import migrate
from egis.db.engine import make_engine

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stdout)

async def main() -> None:
    engine = make_engine(sys.argv[1], pool_size=1)
    barrier = pathlib.Path(sys.argv[2])
    (barrier / f"ready-{os.getpid()}").touch()
    while not (barrier / "go").exists():  # all processes start the upgrade at the same moment
        time.sleep(0.002)
    await migrate.upgrade(engine)
    print("revision", await migrate.current_revision(engine))
    await engine.dispose()

asyncio.run(main())
"""


def _release_when_ready(barrier: Path, count: int, timeout: float = 60.0) -> None:
    """Once every interpreter has imported alembic and sqlalchemy, let them all go at once."""
    deadline = time.monotonic() + timeout
    while len(list(barrier.glob("ready-*"))) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    (barrier / "go").touch()


async def test_concurrent_upgrades_in_separate_processes_apply_each_migration_once(
    pg_server: EmbeddedPostgres, repo_root: Path, tmp_path: Path
) -> None:
    """Three worker replicas starting together on an empty database: the advisory lock lets one
    process apply the migrations; the others wait, then find the database at head."""
    url = await create_database(pg_server, template=None)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            UPGRADE_AT,
            url,
            str(tmp_path),
            cwd=repo_root,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        for _ in range(3)
    ]
    try:
        await asyncio.to_thread(_release_when_ready, tmp_path, len(procs))
        outputs = [(await p.communicate())[0].decode() for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(outputs)
        head = migrate.head_revision()
        assert all(f"revision {head}" in out for out in outputs), outputs
        applied = [line for out in outputs for line in out.splitlines() if "Running upgrade" in line]
        revisions = sorted(p.stem for p in (repo_root / "egis" / "migrations" / "versions").glob("0*.py"))
        assert len(applied) == len(revisions), applied  # each migration ran exactly once, in one process
        assert sum(any("Running upgrade" in line for line in out.splitlines()) for out in outputs) == 1
        engine = make_engine(url, pool_size=1)
        try:
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT count(*) FROM alembic_version"))).scalar_one() == 1
                tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
                assert tables >= TABLES
        finally:
            await engine.dispose()
    finally:
        await drop_database(pg_server, url)
