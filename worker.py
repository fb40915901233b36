"""The Egis worker: runs every workflow and activity.

    python worker.py            (or: egis worker)

- the main task queue (`EGIS_TASK_QUEUE`, default `egis`) runs the workflows and the database
  activities;
- one task queue per exchange account (`egis-<exchange>-<account>`) runs the activities that
  call that exchange, with the queue's activity rate limit set from the exchange's published
  limits, so the limit holds across any number of workers. Accounts are discovered from the
  bots table, and new ones are picked up while running.

Reads DATABASE_URL / TEMPORAL_ADDRESS (env or .env), or the embedded stack started by
`egis dev up`. Applies pending migrations at start (under an advisory lock, so replicas can
start together) and registers the search attributes. Stops gracefully on SIGINT / SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import prometheus_client
from pydantic import ValidationError
from sqlalchemy import select
from temporalio.client import Client
from temporalio.worker import Worker

from activities import account_queue_activities, main_queue_activities
from activities.deps import Deps
from egis import faults, redact
from egis.cli import hard_exit
from egis.config import Settings
from egis.db import migrate
from egis.db.engine import make_engine
from egis.db.schema import bots
from egis.errors import EgisError
from egis.exchanges.accounts import load_account
from egis.models import Exchange, account_task_queue
from egis.temporal import connect, ensure_search_attributes, metrics_runtime
from workflows.registry import ALL_WORKFLOWS

log = logging.getLogger("egis.worker")

ACTIVITIES_PER_SECOND: dict[Exchange, float | None] = {
    # Binance USD-M: 300 orders / 10 s and 2,400 request weight / min per account; an activity
    # makes 2-3 requests, so 20 activities/s stays inside both.
    Exchange.BINANCEUSDM: 20.0,
    # Bybit v5: 10 order requests / s per UID on linear create/amend/cancel.
    Exchange.BYBIT: 10.0,
    # The paper exchange is our own database: no exchange limit.
    Exchange.PAPER: None,
}
DISCOVERY_INTERVAL = 5.0


def rate_limit(exchange: Exchange, account: str, settings: Settings) -> float | None:
    """The exchange's default, unless the account file sets `activities_per_second`."""
    with contextlib.suppress(EgisError):
        override = load_account(account, exchange, settings.resolved_accounts_dir).activities_per_second
        if override is not None:
            return override or None
    return ACTIVITIES_PER_SECOND[exchange]


class AccountWorkers:
    """One Worker per exchange-account task queue, started as accounts appear in `bots`."""

    def __init__(self, client: Client, deps: Deps) -> None:
        self.client = client
        self.deps = deps
        self.running: dict[str, tuple[Worker, asyncio.Task[None]]] = {}

    async def discover(self) -> None:
        async with self.deps.engine.connect() as conn:
            rows = (await conn.execute(select(bots.c.exchange, bots.c.account).distinct())).all()
        for exchange_name, account in rows:
            exchange = Exchange(exchange_name)
            queue = account_task_queue(self.deps.settings.task_queue, exchange, account)
            if queue in self.running:
                continue
            limit = rate_limit(exchange, account, self.deps.settings)
            worker = Worker(
                self.client,
                task_queue=queue,
                activities=account_queue_activities(self.deps),
                max_task_queue_activities_per_second=limit,
            )
            self.running[queue] = (worker, asyncio.create_task(worker.run()))
            log.info("serving %s (%s activities/s)", queue, limit or "unlimited")

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.discover()
            except Exception as exc:  # the database may be restarting: keep serving, retry later
                log.warning("account discovery failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), DISCOVERY_INTERVAL)

    async def shutdown(self) -> None:
        await asyncio.gather(*(worker.shutdown() for worker, _ in self.running.values()), return_exceptions=True)
        await asyncio.gather(*(task for _, task in self.running.values()), return_exceptions=True)


def build_main_worker(client: Client, deps: Deps) -> Worker:
    return Worker(
        client,
        task_queue=deps.settings.task_queue,
        workflows=ALL_WORKFLOWS,
        activities=main_queue_activities(deps),
        # a payload that fails validation fails the workflow with a clear error instead of
        # retrying its task forever
        workflow_failure_exception_types=[ValidationError],
    )


async def run_worker(settings: Settings, stop: asyncio.Event, *, apply_migrations: bool = True) -> None:
    faults.load_from_env()
    engine = make_engine(settings.require_database_url())
    if apply_migrations:
        await migrate.upgrade(engine)
    if settings.metrics_port:
        prometheus_client.start_http_server(settings.metrics_port, addr=settings.metrics_host)
    sdk_metrics = f"{settings.metrics_host}:{settings.sdk_metrics_port}"
    runtime = metrics_runtime(sdk_metrics) if settings.sdk_metrics_port else None
    client = await connect(settings.require_temporal_address(), settings.temporal_namespace, runtime=runtime)
    added = await ensure_search_attributes(client)
    if added:
        log.info("registered search attributes %s", ", ".join(added))
    deps = Deps.build(settings, engine, client)
    accounts = AccountWorkers(client, deps)
    log.info("worker ready: task queue %s on %s", settings.task_queue, settings.require_temporal_address())
    try:
        async with build_main_worker(client, deps):
            await accounts.run(stop)
    finally:
        await accounts.shutdown()
        await deps.gateways.close()
        await engine.dispose()
        log.info("worker stopped")


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redact.install()

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop)

    code = 0
    try:
        asyncio.run(_main())
    except KeyboardInterrupt:
        pass
    except Exception:
        log.exception("worker failed")
        code = 1
    hard_exit(code)


if __name__ == "__main__":
    main()
