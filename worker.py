"""The Egis worker: runs every workflow and activity.

    python worker.py            (or: egis worker)

Reads DATABASE_URL / TEMPORAL_ADDRESS (env or .env), or the addresses of the embedded stack
started by `egis dev up` for the data dir. Applies pending migrations at start (serialized by
an advisory lock, so replicas can start together). Stops gracefully on SIGINT / SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import prometheus_client
from pydantic import ValidationError
from temporalio.worker import Worker

from activities import main_queue_activities
from activities.deps import Deps
from egis.config import Settings
from egis.db import migrate
from egis.db.engine import make_engine
from egis.temporal import connect, ensure_search_attributes, metrics_runtime
from workflows import ALL_WORKFLOWS

log = logging.getLogger("egis.worker")


async def run_worker(settings: Settings, stop: asyncio.Event, *, apply_migrations: bool = True) -> None:
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
    worker = Worker(
        client,
        task_queue=settings.task_queue,
        workflows=ALL_WORKFLOWS,
        activities=main_queue_activities(deps),
        # a payload that fails validation fails the workflow with a clear error instead of
        # retrying its task forever
        workflow_failure_exception_types=[ValidationError],
    )
    log.info("worker ready: task queue %s on %s", settings.task_queue, settings.require_temporal_address())
    try:
        async with worker:
            await stop.wait()
    finally:
        await engine.dispose()
        log.info("worker stopped")


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main())


if __name__ == "__main__":
    main()
