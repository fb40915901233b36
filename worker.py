"""The Egis worker: runs every workflow and activity.

    python worker.py            (or: egis worker)

- the main task queue (`EGIS_TASK_QUEUE`, default `egis`) runs the workflows and the database
  activities;
- one task queue per exchange account (`egis-<exchange>-<account>`) runs the activities that
  call that exchange, with the queue's activity rate limit set from the exchange's published
  limits once on the cluster (egis/queues.py), so the limit holds across any number of workers.
  Accounts are discovered from the bots table, and new ones are picked up while running.

With `EGIS_BUILD_ID` set, every worker of the process runs as the Worker Deployment Version
(`EGIS_DEPLOYMENT_NAME`, `EGIS_BUILD_ID`) (egis/versioning.py, docs/operations.md).

Reads DATABASE_URL and the Temporal client configuration (egis/temporal.py: profile, TEMPORAL_*
variables, env or .env), or the embedded stack started by `egis dev up`. At start it applies
pending migrations (under an advisory lock, so replicas can start together), checks the search
attributes (adding them only where allowed and asked), and creates the maintenance schedules
that do not exist yet (safe defaults; an account's sync when it is discovered). When it starts
serving a live account whose last `egis selftest` found a difference Egis does not handle, it
logs a WARNING naming it. Stops gracefully on SIGINT / SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import logging
import py_compile
import signal
import sys
from collections.abc import Iterable

import prometheus_client
from pydantic import ValidationError
from sqlalchemy import select
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.worker import Worker

from activities import account_queue_activities, main_queue_activities
from activities.deps import Deps
from egis import faults, metrics, redact, schedules, versioning
from egis.config import Settings
from egis.db import migrate
from egis.db.engine import make_engine
from egis.db.schema import bots
from egis.errors import EgisError
from egis.exchanges.accounts import load_account
from egis.models import AccountInput, Exchange, account_task_queue, stream_workflow_id
from egis.process import hard_exit
from egis.queues import set_queue_rate_limit
from egis.selftest import latest_selftest, warning_for
from egis.temporal import (
    check_search_attributes,
    connect,
    metrics_runtime,
    register_search_attributes_by_default,
    resolve_connect_options,
)
from workflows.registry import workflows_for

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


QUEUE_HEADROOM = 0.8
"""An account queue runs at 80 % of the venue's limit. Temporal's queue limiter is a token bucket
that lets about one second's worth through at once on top of the rate, so a 10 s window can hold
11 s worth: at the full limit a burst from three workers reached 10.9/s at the exchange over a
10 s window (bench section 7); at 85 % it still reached 9.5/s. At 80 %: a second's worth plus ten
seconds' worth, 8 + 80 requests in any 10 s window, well below the venue's 100."""


def venue_limit(exchange: Exchange, account: str, settings: Settings) -> float | None:
    """The venue's limit for the account (activities/s): the exchange's default, unless the
    account file sets `activities_per_second` (0: none)."""
    with contextlib.suppress(EgisError):
        override = load_account(account, exchange, settings.resolved_accounts_dir).activities_per_second
        if override is not None:
            return override or None
    return ACTIVITIES_PER_SECOND[exchange]


def rate_limit(exchange: Exchange, account: str, settings: Settings) -> float | None:
    """The account queue's activity rate limit: the venue's limit less the headroom (None: none)."""
    venue = venue_limit(exchange, account, settings)
    return round(venue * QUEUE_HEADROOM, 2) if venue else None


class AccountWorkers:
    """One Worker per exchange-account task queue, started as accounts appear in `bots`."""

    def __init__(self, client: Client, deps: Deps) -> None:
        self.client = client
        self.deps = deps
        self.running: dict[str, tuple[Worker, asyncio.Task[None]]] = {}
        self.scheduled: set[tuple[Exchange, str]] = set()
        self.streaming: set[tuple[Exchange, str]] = set()

    async def discover(self) -> None:
        async with self.deps.engine.connect() as conn:
            rows = (await conn.execute(select(bots.c.exchange, bots.c.account).distinct())).all()
        for exchange_name, account in rows:
            exchange = Exchange(exchange_name)
            await self._ensure_sync(exchange, account)
            await self._ensure_stream(exchange, account)
            await self.serve(exchange, account)

    async def serve(self, exchange: Exchange, account: str) -> None:
        """Start the worker of one account's queue (once), its rate limit set on the cluster first."""
        queue = account_task_queue(self.deps.settings.task_queue, exchange, account)
        if queue in self.running:
            return
        limit = rate_limit(exchange, account, self.deps.settings)
        # once for the queue, on the cluster; the Worker passes the same value with its polls
        await set_queue_rate_limit(self.client, queue, limit, f"egis: {exchange.value} account {account}")
        worker = Worker(
            self.client,
            task_queue=queue,
            activities=account_queue_activities(self.deps),
            max_task_queue_activities_per_second=limit,
            deployment_config=versioning.deployment_config(self.deps.settings),
        )
        self.running[queue] = (worker, asyncio.create_task(worker.run()))
        log.info("serving %s (%s activities/s)", queue, limit or "unlimited")
        if exchange is not Exchange.PAPER:
            await self._selftest_notice(exchange, account)

    async def _selftest_notice(self, exchange: Exchange, account: str) -> None:
        """A WARNING for a live account whose last `egis selftest` found a difference Egis does not
        handle (or left a position behind); a note for one never selftested."""
        try:
            async with self.deps.engine.connect() as conn:
                run = await latest_selftest(conn, exchange, account)
        except Exception as exc:
            log.warning("could not read the last selftest of %s/%s: %s", exchange, account, exc)
            return
        if run is None:
            log.info(
                "%s/%s has never been selftested: `egis selftest --account %s` checks that the venue behaves "
                "as Egis assumes",
                exchange,
                account,
                account,
            )
            return
        warning = warning_for(run)
        if warning:
            log.warning("%s", warning)

    async def _ensure_sync(self, exchange: Exchange, account: str) -> None:
        """A live account gets its exchange-sync schedule as soon as it is discovered, so a
        position closed on the exchange behind everyone's back is found without anyone asking."""
        key = (exchange, account)
        if exchange is Exchange.PAPER or key in self.scheduled or not self.deps.settings.auto_schedules:
            return
        created = await schedules.ensure(self.client, self.deps.settings.task_queue, [key], maintenance=False)
        self.scheduled.add(key)
        for sid in created:
            log.info("created schedule %s (exchange sync of %s/%s, every 15 s)", sid, exchange, account)

    async def _ensure_stream(self, exchange: Exchange, account: str) -> None:
        """A live account's private stream runs as ONE workflow with a fixed id, whichever worker
        starts it first; the others find it running (USE_EXISTING)."""
        key = (exchange, account)
        if exchange is Exchange.PAPER or key in self.streaming or not self.deps.settings.streams:
            return
        with contextlib.suppress(EgisError):
            if not load_account(account, exchange, self.deps.settings.resolved_accounts_dir).stream:
                return  # the account file says "stream": false: REST polling only
        queue = self.deps.settings.task_queue
        await self.client.start_workflow(
            "AccountStreamWorkflow",
            AccountInput(exchange=exchange, account=account),
            id=stream_workflow_id(queue, exchange, account),
            task_queue=queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        )
        self.streaming.add(key)
        log.info("private stream of %s/%s: running", exchange, account)

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


def cache_workflow_bytecode(workflow_classes: Iterable[type]) -> list[str]:
    """Write the bytecode of the workflow classes' modules; the paths written.

    The sandbox re-imports a workflow's module for every workflow instance (each start, and each
    replay after a cache eviction or a worker restart). Without that module's bytecode cached the
    import compiles its source every time: ~10 ms of CPU per instance for workflows/position.py,
    more than half the instance's cost, and 10,000 replays after a restart. Python writes the
    cache on first import unless PYTHONDONTWRITEBYTECODE is set (a common container setting, and
    this project's CI machine's); it is written here either way. The Dockerfile byte-compiles at
    build time (its runtime user cannot write /app): a directory that cannot be written is left
    as it is."""
    modules = set()
    for cls in workflow_classes:  # each module and its packages (the sandbox imports both)
        parts = cls.__module__.split(".")
        modules.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    written = []
    for source in sorted({getattr(sys.modules[name], "__file__", None) or "" for name in modules} - {""}):
        target = importlib.util.cache_from_source(source)
        try:
            py_compile.compile(source, cfile=target, doraise=True)
        except (OSError, py_compile.PyCompileError) as exc:
            log.info("workflow bytecode not cached for %s: %s", source, exc)
            continue
        written.append(target)
    return written


def freeze_startup_heap() -> int:
    """Move everything alive once the worker is built (its modules: ccxt alone is most of ~300,000
    objects) out of the garbage collector's sight (`gc.freeze`): they live as long as the process,
    and a full collection, which stops the worker, no longer walks them (~0.2 s each, measured
    alone). Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def build_main_worker(client: Client, deps: Deps, workflows: list[type] | None = None) -> Worker:
    deployment = versioning.deployment_config(deps.settings)
    if workflows is None:
        workflows = workflows_for(deployment is not None)
        cache_workflow_bytecode(workflows)
    return Worker(
        client,
        task_queue=deps.settings.task_queue,
        # a versioning behaviour only with a deployment version (workflows/registry.py)
        workflows=workflows,
        activities=main_queue_activities(deps),
        # a payload that fails validation fails the workflow with a clear error instead of
        # retrying its task forever
        workflow_failure_exception_types=[ValidationError],
        deployment_config=deployment,
        max_cached_workflows=deps.settings.workflow_cache_size,
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
    temporal = resolve_connect_options(settings)  # profile / TEMPORAL_* / settings / embedded stack
    client = await connect(temporal, runtime=runtime)
    register = register_search_attributes_by_default(settings, temporal)
    added = await check_search_attributes(client, register=register, address=temporal.target_host)
    if added:
        log.info("registered search attributes %s", ", ".join(added))
    deps = Deps.build(settings, engine, client)
    if settings.auto_schedules:  # maintenance runs without being asked (safe defaults; existing ones untouched)
        for sid in await schedules.ensure(client, settings.task_queue, [], maintenance=True):
            log.info("created schedule %s (safe defaults: dry run)", sid)
    accounts = AccountWorkers(client, deps)
    version = versioning.deployment_version(settings)
    as_version = f", version {version.to_canonical_string()}" if version else ", unversioned"
    log.info("worker ready: task queue %s on %s%s", settings.task_queue, temporal.describe(), as_version)
    promote: asyncio.Task[bool] | None = None
    gc_watch = None
    try:
        async with build_main_worker(client, deps):
            freeze_startup_heap()
            gc_watch = metrics.watch_gc_pauses(log)
            if version is not None and settings.promote_first_version:
                promote = asyncio.create_task(_promote_first(client, version))
            await accounts.run(stop)
    finally:
        if promote is not None:
            promote.cancel()
        await accounts.shutdown()
        await deps.gateways.close()
        await engine.dispose()
        if gc_watch is not None:
            gc.callbacks.remove(gc_watch)
        log.info("worker stopped")


async def _promote_first(client: Client, version: versioning.WorkerDeploymentVersion) -> bool:
    """A first deploy: no version of the deployment is current yet, so this one becomes current."""
    try:
        promoted = await versioning.promote_if_first(client, version)
    except Exception as exc:  # never stop the worker for this: the operator can set it by hand
        log.warning("could not check the deployment's current version: %s", exc)
        return False
    if promoted:
        log.info("deployment %s had no current version: made %s current", version.deployment_name, version.build_id)
    return promoted


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
    except EgisError as exc:  # a refusal we explain (a port, missing search attributes...): one clear line
        log.error("worker cannot start: %s", exc)
        code = 1
    except Exception:
        log.exception("worker failed")
        code = 1
    hard_exit(code)


if __name__ == "__main__":
    main()
