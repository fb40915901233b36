"""Async engine creation (SQLAlchemy 2.0 + asyncpg)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from egis.config import async_database_url

# libpq's TLS parameters. SQLAlchemy hands URL query parameters to asyncpg.connect() as keyword
# arguments, and asyncpg takes `ssl=`, not `sslmode=` (`?sslmode=require` fails with "unexpected
# keyword argument 'sslmode'"); asyncpg does understand all of them inside a DSN, exactly as libpq.
IDLE_PING_SECONDS = 10.0
"""A pooled connection idle for longer than this is pinged before use (a PostgreSQL restart or a
dropped connection is found there, and a fresh connection is used instead); one in steady use
is not: a ping is three round trips with asyncpg (BEGIN, a query, ROLLBACK), which SQLAlchemy's
`pool_pre_ping` pays on every checkout."""

LIBPQ_TLS_PARAMS = frozenset({"sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl", "sslnegotiation"})


def engine_url_and_args(database_url: str) -> tuple[str, dict[str, str]]:
    """The SQLAlchemy URL without libpq TLS parameters, and the connect args that carry them
    (a host-less DSN asyncpg reads them from: `?sslmode=verify-full&sslrootcert=ca.pem` works
    as it does for psql)."""
    url = make_url(async_database_url(database_url))
    tls = {k: v for k, v in url.query.items() if k in LIBPQ_TLS_PARAMS}
    if not tls:
        return url.render_as_string(hide_password=False), {}
    flat = {k: v if isinstance(v, str) else v[-1] for k, v in tls.items()}
    url = url.difference_update_query(list(tls))
    return url.render_as_string(hide_password=False), {"dsn": "postgresql://?" + urlencode(flat)}


def make_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An engine for `database_url` (postgresql:// or postgresql+asyncpg://, with libpq's
    `sslmode`, `sslrootcert`, `sslcert`, `sslkey` query parameters if TLS is wanted)."""
    url, connect_args = engine_url_and_args(database_url)
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, connect_args=connect_args)
    ping_when_idle(engine, IDLE_PING_SECONDS)
    return engine


def ping_when_idle(engine: AsyncEngine, idle_seconds: float) -> None:
    """Survive a PostgreSQL restart without surfacing dead connections, paying the ping only for
    connections that sat idle (a connection that dies while in use fails that one transaction,
    and the activity that ran it is retried)."""
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "checkin")
    def _idle_since(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < idle_seconds:
            return
        try:
            dbapi_connection.ping()
        except Exception:
            raise exc.DisconnectionError("an idle pooled connection did not answer a ping") from None
