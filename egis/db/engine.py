"""Async engine creation (SQLAlchemy 2.0 + asyncpg)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from egis.config import async_database_url


def make_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An engine for `database_url` (postgresql:// or postgresql+asyncpg://)."""
    return create_async_engine(
        async_database_url(database_url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,  # survive a PostgreSQL restart without surfacing dead connections
    )
