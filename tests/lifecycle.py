"""Helpers for lifecycle tests: real workers (in-process) on a unique task queue per test, a
client on the same Temporal server and database, bots on the simulator accounts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import account_queue_activities, main_queue_activities
from activities.deps import Deps
from egis.client import EgisClient
from egis.models import (
    AgedPolicy,
    BotSpec,
    Exchange,
    OpenPositionInput,
    account_task_queue,
    position_workflow_id,
    watcher_workflow_id,
)
from tests.conftest import ACCOUNTS
from worker import cache_workflow_bytecode
from workflows.registry import workflows_for

D = Decimal


@dataclass
class Harness:
    deps: Deps
    client: EgisClient
    temporal: Client
    queue: str
    env: WorkflowEnvironment | None = None
    started: list[str] = field(default_factory=list)

    async def bot(self, exchange: Exchange, *, budget: str = "1000", aged: AgedPolicy | None = None) -> str:
        name = f"{exchange.value[:5]}-{uuid.uuid4().hex[:6]}"
        await self.client.create_bot(
            BotSpec(name=name, exchange=exchange, account=ACCOUNTS[exchange.value], budget_usd=D(budget), aged=aged),
            actor="test",
        )
        return name

    async def open(self, bot: str, symbol: str = "BTCUSDT", side: str = "long", usd: str = "120", **kw: Any) -> Any:
        request = OpenPositionInput(bot=bot, symbol=symbol, side=side, usd=D(usd), ref=f"r-{uuid.uuid4().hex[:8]}")
        self.started.append(position_workflow_id(bot, request.ref))
        return await self.client.open_position(request, **kw)

    async def terminate_leftovers(self) -> None:
        """Stop this test's workflows (positions, watchers) so none outlives its worker: on the
        time-skipping server a pending task nobody polls would stop the clock for every later test."""
        watchers = [watcher_workflow_id(self.queue, Exchange(ex), acct) for ex, acct in ACCOUNTS.items()]
        for workflow_id in [*self.started, *watchers]:
            with contextlib.suppress(Exception):
                await self.temporal.get_workflow_handle(workflow_id).terminate("test finished")


@contextlib.asynccontextmanager
async def workers(temporal: Client, deps: Deps) -> AsyncIterator[None]:
    """The main worker plus one worker per simulator account, exactly as worker.py builds them."""
    queue = deps.settings.task_queue
    registered = workflows_for(versioned=False)
    cache_workflow_bytecode(registered)
    main = Worker(
        temporal,
        task_queue=queue,
        workflows=registered,
        activities=main_queue_activities(deps),
        workflow_failure_exception_types=[ValidationError],
    )
    per_account = [
        Worker(
            temporal,
            task_queue=account_task_queue(queue, Exchange(ex), acct),
            activities=account_queue_activities(deps),
        )
        for ex, acct in ACCOUNTS.items()
    ]
    async with contextlib.AsyncExitStack() as stack:
        for worker in (main, *per_account):
            await stack.enter_async_context(worker)
        yield


@contextlib.asynccontextmanager
async def harness(temporal: Client, deps: Deps, *, tick_seconds: float = 1.0) -> AsyncIterator[Harness]:
    queue = f"t-{uuid.uuid4().hex[:10]}"
    deps.settings = deps.settings.model_copy(update={"task_queue": queue, "watch_tick_seconds": tick_seconds})
    deps.temporal = temporal
    client = EgisClient(deps.settings, deps.engine, temporal)
    built = Harness(deps=deps, client=client, temporal=temporal, queue=queue)
    async with workers(temporal, deps):
        try:
            yield built
        finally:
            await built.terminate_leftovers()  # while the workers still run, so nothing is left in flight


async def eventually(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.2) -> Any:
    """Poll until `check()` returns something truthy (visibility is eventually consistent)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result or asyncio.get_running_loop().time() > deadline:
            return result
        await asyncio.sleep(interval)


def counter(metric: Any, **labels: str) -> float:
    return metric.labels(**labels)._value.get()


HISTORIES = Path(__file__).resolve().parent / "histories"


async def keep_history(temporal: Client, workflow_id: str, name: str) -> None:
    """With EGIS_RECORD_HISTORIES=1, save this workflow's history for the replay test.

    Checked-in histories prove that new workflow code still replays what running workflows
    already recorded (tests/test_replay.py). Re-record only on purpose.
    """
    if os.environ.get("EGIS_RECORD_HISTORIES") != "1":
        return
    history = await temporal.get_workflow_handle(workflow_id).fetch_history()
    HISTORIES.mkdir(exist_ok=True)
    (HISTORIES / f"{name}.json").write_text(history.to_json())
