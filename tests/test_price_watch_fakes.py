"""The price watcher's own logic, against a fake `check_aged_exits` registered under the real name
on the time-skipping server, started and told by the real `ensure_price_watcher` activity.

- a position that ages while its account's watcher is in its last idle tick keeps the watcher
  going (the ensure's `watch` signal resets the idle count; the watcher used to end under it, and
  the position was not watched until its next re-check);
- a tick that fails for good is logged and the watcher goes on (it used to fail, and with it the
  watch over every aged position of the account);
- every aged position's re-check of its watcher comes every 2 hours and a spread (positions
  that aged together do not re-check together), not every 30 minutes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

import pytest_asyncio
from temporalio import activity
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from activities.deps import Deps
from activities.watch import WatchActivities
from egis.models import (
    AgedCheckInput,
    AgedCheckResult,
    AgedPolicy,
    BotContext,
    Exchange,
    OpenInput,
    OpenPositionInput,
    OrderOutcome,
    PositionWorkflowInput,
    WatcherInput,
    account_task_queue,
    watcher_workflow_id,
)
from tests.lifecycle import keep_history
from tests.test_position_workflow_fakes import filled_open
from workflows.position import PositionWorkflow
from workflows.price_watch import IDLE_TICKS_BEFORE_EXIT, UnversionedPriceWatchWorkflow

D = Decimal
ACCOUNT = "acct"


@dataclass
class FakeTicks:
    """`check_aged_exits` answers "nothing watched"; call `hold_at` waits for `release`; the first
    call can fail for good."""

    calls: int = 0
    hold_at: int | None = None
    held: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    fail_first: bool = False

    def activity(self):  # type: ignore[no-untyped-def]
        @activity.defn(name="check_aged_exits")
        async def check_aged_exits(request: AgedCheckInput) -> AgedCheckResult:
            self.calls += 1
            if self.calls == self.hold_at:
                self.held.set()
                await self.release.wait()
            if self.calls == 1 and self.fail_first:
                raise ApplicationError("credentials rejected", type="ExchangeRejected", non_retryable=True)
            return AgedCheckResult(watched=0, triggers=[], tickers_requests=0)

        return check_aged_exits


@dataclass
class Rig:
    env: WorkflowEnvironment
    queue: str
    ticks: FakeTicks
    activities: ActivityEnvironment
    watch: WatchActivities

    async def ensure(self) -> WorkflowHandle:  # type: ignore[type-arg]
        request = WatcherInput(exchange=Exchange.BYBIT, account=ACCOUNT)
        workflow_id = await self.activities.run(self.watch.ensure_price_watcher, request)
        return self.env.client.get_workflow_handle(workflow_id, result_type=int)

    async def finished(self, handle: WorkflowHandle) -> WorkflowExecutionStatus:  # type: ignore[type-arg]
        """Let time skip until the watcher ends; its final status."""
        async with self.env.time_skipping_unlocked():
            for _ in range(600):
                status = (await handle.describe()).status
                if status is not None and status != WorkflowExecutionStatus.RUNNING:
                    return status
                await asyncio.sleep(0.1)
        raise AssertionError(f"{handle.id} did not end")


@pytest_asyncio.fixture
async def rig(ts_env: WorkflowEnvironment, deps: Deps) -> AsyncIterator[Rig]:
    queue = f"watch-{uuid.uuid4().hex[:8]}"
    ticks = FakeTicks()
    deps.temporal = ts_env.client
    activities = ActivityEnvironment()
    activities.info = dataclasses.replace(activities.info, task_queue=queue)
    async with (
        Worker(ts_env.client, task_queue=queue, workflows=[UnversionedPriceWatchWorkflow]),
        Worker(
            ts_env.client,
            task_queue=account_task_queue(queue, Exchange.BYBIT, ACCOUNT),
            activities=[ticks.activity()],
        ),
    ):
        yield Rig(ts_env, queue, ticks, activities, WatchActivities(deps))


async def test_a_position_aging_in_the_watchers_last_idle_tick_keeps_it_watching(rig: Rig) -> None:
    # the start's own signal resets the count at the first tick; the tick that would make the
    # watcher's idle count full is held while a second position ages
    rig.ticks.hold_at = IDLE_TICKS_BEFORE_EXIT
    handle = await rig.ensure()
    assert handle.id == watcher_workflow_id(rig.queue, Exchange.BYBIT, ACCOUNT)
    async with rig.env.time_skipping_unlocked():
        await asyncio.wait_for(rig.ticks.held.wait(), 30)
    again = await rig.ensure()  # the watcher is running: it is told, not started
    assert again.id == handle.id
    rig.ticks.release.set()  # the held tick finds nothing (the new position is not in it)
    assert await rig.finished(handle) == WorkflowExecutionStatus.COMPLETED
    # a full idle count more after the signal (without it the watcher ended with the held tick and
    # the new aged position was not watched until its re-check)
    assert rig.ticks.calls == 2 * IDLE_TICKS_BEFORE_EXIT
    history = await handle.fetch_history()
    signals = [
        e.workflow_execution_signaled_event_attributes.signal_name
        for e in history.events
        if e.HasField("workflow_execution_signaled_event_attributes")
    ]
    assert signals == ["watch", "watch"]  # signal-with-start's own, and the second ensure's
    await keep_history(rig.env.client, handle.id, "price_watcher_told_in_its_last_idle_tick")


async def test_a_tick_that_fails_for_good_does_not_end_the_watcher(rig: Rig) -> None:
    rig.ticks.fail_first = True
    handle = await rig.ensure()
    # the failed tick counts as nothing (not idle); then a full idle count and the watcher ends
    assert await rig.finished(handle) == WorkflowExecutionStatus.COMPLETED
    assert rig.ticks.calls == 1 + IDLE_TICKS_BEFORE_EXIT
    await keep_history(rig.env.client, handle.id, "price_watcher_outlives_a_failed_tick")


POLICY = AgedPolicy(max_age_s=3600, grace_s=30 * 86400, loss_step_pct=D(1), max_loss_pct=D(5), expire_s=31 * 86400)


async def test_an_aged_position_rechecks_its_watcher_every_two_hours_spread(ts_env: WorkflowEnvironment) -> None:
    queue = f"aged-{uuid.uuid4().hex[:8]}"
    ensured: list[datetime] = []

    @activity.defn(name="open_position")
    async def open_position(request: OpenInput) -> OrderOutcome:
        return filled_open()

    @activity.defn(name="ensure_price_watcher")
    async def ensure_price_watcher(request: WatcherInput) -> str:
        ensured.append(activity.info().current_attempt_scheduled_time)
        return "watch-fake"

    context = BotContext(bot="alpha", exchange=Exchange.BYBIT, account=ACCOUNT, aged=POLICY)
    request = OpenPositionInput(bot="alpha", symbol="BTCUSDT", side="long", usd=D(120), ref="r1")
    async with (
        Worker(ts_env.client, task_queue=queue, workflows=[PositionWorkflow], activities=[ensure_price_watcher]),
        Worker(
            ts_env.client, task_queue=account_task_queue(queue, Exchange.BYBIT, ACCOUNT), activities=[open_position]
        ),
    ):
        handle = await ts_env.client.start_workflow(
            PositionWorkflow.run,
            PositionWorkflowInput(request=request, bot_context=context),
            id=f"pos-alpha-r1-{queue}",
            task_queue=queue,
        )
        try:
            async with ts_env.time_skipping_unlocked():
                for _ in range(600):
                    if len(ensured) >= 4:
                        break
                    await asyncio.sleep(0.1)
            assert len(ensured) >= 4, ensured
            gaps = [later - earlier for earlier, later in itertools.pairwise(ensured)][:3]
            # once at max age, then every 2 hours and up to 30 minutes, drawn each time (it was 30 minutes sharp)
            assert all(timedelta(hours=2) <= gap <= timedelta(hours=2, minutes=31) for gap in gaps), gaps
            assert len(set(gaps)) > 1, gaps
            await keep_history(ts_env.client, handle.id, "aged_position_rechecks_spread")
        finally:
            await handle.terminate("test over")
