"""PositionWorkflow's own logic, against fake activities registered under the real names, on the
time-skipping test server: the orchestration alone, with no database and no exchange.

- a close that keeps answering "still closing" (partial fills) is tried five times, then handed
  to `close_failed`, and the position waits for an operator (open, with the error);
- a close activity that fails for good goes to `close_failed` (the patched path);
- the `request_close` update's validator refuses what the position cannot do.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
import pytest_asyncio
from pydantic import ValidationError
from temporalio import activity
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError, WorkflowUpdateStage
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from egis.models import (
    BotContext,
    CloseFailedInput,
    CloseInput,
    CloseOutcomeKind,
    CloseRequest,
    CloseResult,
    Exchange,
    ObserveInput,
    ObserveResult,
    OpenInput,
    OpenPlan,
    OpenPositionInput,
    OrderOutcome,
    OrderStatus,
    PlaceOrderInput,
    PlanOpenInput,
    PositionStatus,
    PositionWorkflowInput,
    ReservedPosition,
    ReserveInput,
    SyncHint,
    account_task_queue,
)
from workflows.position import PositionWorkflow

D = Decimal


@dataclass
class Fakes:
    """Scripted activities: each close answer is taken from `closes` in turn."""

    closes: list[CloseResult | Exception | asyncio.Event] = field(default_factory=list)
    close_calls: list[CloseInput] = field(default_factory=list)
    failed_calls: list[CloseFailedInput] = field(default_factory=list)
    close_started: asyncio.Event = field(default_factory=asyncio.Event)
    open_gate: asyncio.Event | None = None  # when set to an unset event, the open waits for it
    open_started: asyncio.Event = field(default_factory=asyncio.Event)
    observed: list[ObserveInput] = field(default_factory=list)

    def activities(self) -> tuple[list, list]:  # type: ignore[type-arg]
        @activity.defn(name="plan_open")
        async def plan_open(request: PlanOpenInput) -> OpenPlan:
            return OpenPlan(quantity=D("0.002"), price=D(60000), amount_step=D("0.001"))

        @activity.defn(name="reserve_position")
        async def reserve_position(request: ReserveInput) -> ReservedPosition:
            return ReservedPosition(position_id=7, uid="u7", order_id=70, client_order_id="egu7o1")

        @activity.defn(name="place_open_order")
        async def place_open_order(request: PlaceOrderInput) -> OrderOutcome:
            return OrderOutcome(
                order_id=70,
                client_order_id="egu7o1",
                status=OrderStatus.FILLED,
                filled_quantity=D("0.002"),
                average_price=D(60000),
                position_status=PositionStatus.OPEN,
            )

        @activity.defn(name="open_position")
        async def open_position(request: OpenInput) -> OrderOutcome:  # the open in one activity (patch LEAN)
            self.open_started.set()
            if self.open_gate is not None:
                await self.open_gate.wait()
            return filled_open()

        @activity.defn(name="close_position")
        async def close_position(request: CloseInput) -> CloseResult:
            self.close_calls.append(request)
            self.close_started.set()
            answer = self.closes.pop(0)
            if isinstance(answer, asyncio.Event):  # hold the close until the test releases it
                await answer.wait()
                answer = self.closes.pop(0)
            if isinstance(answer, Exception):
                raise answer
            assert isinstance(answer, CloseResult)
            return answer

        @activity.defn(name="observe_position")
        async def observe_position(request: ObserveInput) -> ObserveResult:
            self.observed.append(request)
            return ObserveResult(status=PositionStatus.OPEN, changed="none")

        @activity.defn(name="close_failed")
        async def close_failed(request: CloseFailedInput) -> CloseResult:
            self.failed_calls.append(request)
            return CloseResult(
                position_id=request.position_id,
                outcome=CloseOutcomeKind.FAILED,
                status=PositionStatus.OPEN,
                error_message=request.error,
            )

        return [reserve_position, close_failed], [
            plan_open,
            place_open_order,
            open_position,
            close_position,
            observe_position,
        ]


def filled_open() -> OrderOutcome:
    """The open activity's answer: position 7 open, its order filled."""
    return OrderOutcome(
        order_id=70,
        client_order_id="egu7o1",
        status=OrderStatus.FILLED,
        filled_quantity=D("0.002"),
        average_price=D(60000),
        position_status=PositionStatus.OPEN,
        position_id=7,
    )


def still_closing() -> CloseResult:
    return CloseResult(position_id=7, outcome=CloseOutcomeKind.CLOSED, status=PositionStatus.CLOSING, orders_sent=1)


async def start_position(client: Client, queue: str, ref: str) -> WorkflowHandle:  # type: ignore[type-arg]
    """A PositionWorkflow of bot alpha on bybit/acct, started as egis.client starts one."""
    context = BotContext(bot="alpha", exchange=Exchange.BYBIT, account="acct")
    request = OpenPositionInput(bot="alpha", symbol="BTCUSDT", side="long", usd=D(120), ref=ref)
    return await client.start_workflow(
        PositionWorkflow.run,
        PositionWorkflowInput(request=request, bot_context=context),
        id=f"pos-alpha-{ref}-{queue}",
        task_queue=queue,
    )


@pytest_asyncio.fixture
async def fakes(ts_env: WorkflowEnvironment) -> AsyncIterator[tuple[Fakes, WorkflowHandle]]:  # type: ignore[type-arg]
    queue = f"fake-{uuid.uuid4().hex[:8]}"
    scripted = Fakes()
    main_acts, account_acts = scripted.activities()
    async with (
        Worker(
            ts_env.client,
            task_queue=queue,
            workflows=[PositionWorkflow],
            activities=main_acts,
            workflow_failure_exception_types=[ValidationError],
        ),
        Worker(ts_env.client, task_queue=account_task_queue(queue, Exchange.BYBIT, "acct"), activities=account_acts),
    ):
        handle = await start_position(ts_env.client, queue, "r1")
        yield scripted, handle
        with contextlib.suppress(RPCError):
            await handle.terminate("test over")


async def test_a_close_still_closing_after_five_attempts_goes_to_close_failed(fakes) -> None:  # type: ignore[no-untyped-def]
    scripted, handle = fakes
    scripted.closes = [still_closing() for _ in range(5)]
    result = await handle.execute_update(PositionWorkflow.request_close, CloseRequest(reason="manual"))
    assert [c.attempt for c in scripted.close_calls] == [1, 2, 3, 4, 5]
    assert [f.error for f in scripted.failed_calls] == ["still closing after 5 close attempts"]
    assert result.outcome is CloseOutcomeKind.FAILED and result.status is PositionStatus.OPEN
    view = await handle.query(PositionWorkflow.state)
    assert view.status == "open" and view.last_error == "still closing after 5 close attempts"


async def test_a_close_activity_failing_for_good_goes_to_close_failed(fakes) -> None:  # type: ignore[no-untyped-def]
    scripted, handle = fakes
    scripted.closes = [ApplicationError("credentials rejected", type="ExchangeRejected", non_retryable=True)]
    result = await handle.execute_update(PositionWorkflow.request_close, CloseRequest(reason="manual"))
    assert len(scripted.close_calls) == 1 and [f.error for f in scripted.failed_calls] == ["credentials rejected"]
    assert result.status is PositionStatus.OPEN and (await handle.query(PositionWorkflow.state)).status == "open"
    # the operator retries: a new close attempt, a new client order id
    scripted.closes = [CloseResult(position_id=7, outcome=CloseOutcomeKind.CLOSED, status=PositionStatus.CLOSED)]
    closed = await handle.execute_update(PositionWorkflow.request_close, CloseRequest(reason="manual"))
    assert closed.status is PositionStatus.CLOSED and [c.attempt for c in scripted.close_calls] == [1, 2]


async def test_the_update_validator_refuses_what_the_position_cannot_do(fakes) -> None:  # type: ignore[no-untyped-def]
    scripted, handle = fakes
    release = asyncio.Event()
    closed = CloseResult(position_id=7, outcome=CloseOutcomeKind.CLOSED, status=PositionStatus.CLOSED)
    scripted.closes = [release, closed]
    with pytest.raises(WorkflowUpdateFailedError) as invalid:
        await handle.execute_update("request_close", {"reason": "NOT A REASON"})
    assert "invalid reason" in str(invalid.value.cause)
    assert scripted.close_calls == []  # a refused update never reaches an activity
    first = await handle.start_update(
        PositionWorkflow.request_close, CloseRequest(reason="manual"), wait_for_stage=WorkflowUpdateStage.ACCEPTED
    )
    await asyncio.wait_for(scripted.close_started.wait(), 30)  # the close is under way (`closing`)
    with pytest.raises(WorkflowUpdateFailedError) as busy:
        await handle.execute_update(PositionWorkflow.request_close, CloseRequest(reason="manual"))
    assert "is already closing" in str(busy.value.cause)
    release.set()
    assert (await first.result()).status is PositionStatus.CLOSED
    assert len(scripted.close_calls) == 1  # the refused second request never started another close


async def test_a_ghost_hint_while_the_open_settles_is_followed_once_open(fakes, ts_env) -> None:  # type: ignore[no-untyped-def]
    """The stream tells a ghost as soon as the database holds the position open; the workflow may
    still be settling its open then. The hint is kept and followed once open (it was dropped)."""
    scripted, first = fakes
    scripted.open_gate = asyncio.Event()
    scripted.open_started.clear()
    handle = await start_position(ts_env.client, first.id.removeprefix("pos-alpha-r1-"), "r2")
    try:
        await asyncio.wait_for(scripted.open_started.wait(), 30)  # the open is under way
        await handle.signal(PositionWorkflow.sync_hint, SyncHint(kind="ghost"))
        assert (await handle.query(PositionWorkflow.state)).status == "opening"
        scripted.open_gate.set()
        for _ in range(300):
            if scripted.observed:
                break
            await asyncio.sleep(0.1)
        assert [o.hint.kind for o in scripted.observed] == ["ghost"]
        assert (await handle.query(PositionWorkflow.state)).status == "open"
    finally:
        with contextlib.suppress(RPCError):
            await handle.terminate("test over")
