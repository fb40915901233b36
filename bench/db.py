"""Scratch databases on the benchmark's PostgreSQL server, migrated like production."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.env import BenchEnv
from egis.db import migrate
from egis.db.engine import make_engine


@contextlib.asynccontextmanager
async def scratch_database(env: BenchEnv, name: str, *, pool_size: int = 5) -> AsyncIterator[tuple[str, AsyncEngine]]:
    """A fresh database `name`, migrated to head (egis.db.migrate.upgrade); dropped afterwards.
    Yields its URL and an engine on it."""
    assert env.stack.postgres is not None
    admin_url = env.stack.postgres.admin_url
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    await _admin(admin_url, f'CREATE DATABASE "{name}"')
    engine = make_engine(url, pool_size=pool_size)
    try:
        await migrate.upgrade(engine)
        yield url, engine
    finally:
        await engine.dispose()
        await _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _admin(admin_url: str, statement: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()
