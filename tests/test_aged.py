"""Aged positions (seed 003): the pure phase rule, and whole lifecycles on the time-skipping
server, where the hours of an aged policy pass in moments."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import pytest_asyncio
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.deps import Deps
from activities.watch import WatchActivities
from egis.models import AgedPolicy, Exchange, PositionResult, Side, WatcherInput
from egis.rules.aged import aged_phase, target_price, target_reached
from egis.simulator.control import SimulatorControl
from tests.conftest import SIM_KEYS
from tests.lifecycle import Harness, harness, keep_history

D = Decimal
H = 3600
POLICY = AgedPolicy(max_age_s=3 * H, grace_s=8 * H, loss_step_pct=D("0.5"), max_loss_pct=D("2"), expire_s=24 * H)


@pytest.mark.parametrize(
    ("age_h", "phase", "loss", "next_h"),
    [
        (0, "none", None, 3),
        (2.5, "none", None, 0.5),
        (3, "grace", D(0), 8),
        (10.9, "grace", D(0), 0.1),
        (11, "progressive", D("0.5"), 1),
        (12.5, "progressive", D("1.0"), 0.5),
        (16, "progressive", D("2"), 1),  # 6th hour would be 3%: capped at 2%
        (23.5, "progressive", D("2"), 0.5),  # the phase ends at expiry, not at the next hour
        (24, "expired", None, None),
    ],
)
def test_aged_phases(age_h: float, phase: str, loss: Decimal | None, next_h: float | None) -> None:
    result = aged_phase(POLICY, age_h * H)
    assert (result.phase, result.loss_pct) == (phase, loss)
    assert result.seconds_to_next == (None if next_h is None else pytest.approx(next_h * H))


def test_targets_by_side() -> None:
    assert target_price(D(100), Side.LONG, D(0)) == D(100)
    assert target_price(D(100), Side.LONG, D("1.5")) == D("98.500")
    assert target_price(D(100), Side.SHORT, D("1.5")) == D("101.500")
    assert target_reached(Side.LONG, D("98.5"), D("98.5")) and not target_reached(Side.LONG, D("98.4"), D("98.5"))
    assert target_reached(Side.SHORT, D("101"), D("101.5")) and not target_reached(Side.SHORT, D("102"), D("101.5"))


@pytest_asyncio.fixture
async def h(ts_env: WorkflowEnvironment, deps: Deps) -> AsyncIterator[Harness]:
    async with harness(ts_env.client, deps, tick_seconds=1800) as built:
        built.env = ts_env
        yield built


async def run_to_end(h: Harness, workflow_id: str) -> PositionResult:
    """Wait for the result with time skipping unlocked (only start_workflow's own handles do that)."""
    handle = h.temporal.get_workflow_handle(workflow_id, result_type=PositionResult)
    assert h.env is not None
    # The Java test server's history long-poll can return without the close event, so poll the
    # status (time skips while we wait), then read the result of the finished workflow.
    async with h.env.time_skipping_unlocked():
        for _ in range(1200):
            if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
                return await handle.result()
            await asyncio.sleep(0.1)
    raise AssertionError(f"{workflow_id} did not finish")


async def close_orders(sim_control: SimulatorControl) -> list[dict]:  # type: ignore[type-arg]
    return [o for o in await sim_control.orders(SIM_KEYS["bybit"][0]) if o["reduce_only"]]


async def test_seed_003_case_3_normal_aged_close_in_grace(h: Harness, sim_control: SimulatorControl) -> None:
    bot = await h.bot(Exchange.BYBIT, aged=POLICY)
    view = await h.open(bot, symbol="CLOUDUSDT", usd="6")
    await sim_control.set_price("CLOUDUSDT", "0.1324")  # profitable: 1.73% above the 0.13012 entry
    result = await run_to_end(h, view.workflow_id)
    assert result.status == "closed" and result.exit_reason == "aged_grace" and result.exit_price == D("0.1324")
    assert [o["outcome"] for o in await close_orders(sim_control)] == ["accepted"]
    await keep_history(h.temporal, view.workflow_id, "aged_grace_close")
    await keep_history(h.temporal, f"watch-{h.queue}-bybit-sim-bybit", "price_watcher")


async def test_seed_003_case_1_ghost_at_aged_close(h: Harness, sim_control: SimulatorControl) -> None:
    """The position was closed on the exchange before the aged monitor got to it: it is detected
    at the first close attempt, closed as closed_on_exchange, and no order is ever sent."""
    bot = await h.bot(Exchange.BYBIT, aged=POLICY)
    view = await h.open(bot, symbol="CLOUDUSDT", usd="6")
    await sim_control.close_position(SIM_KEYS["bybit"][0], "CLOUDUSDT", price="0.1330")
    await sim_control.set_price("CLOUDUSDT", "0.1324")
    result = await run_to_end(h, view.workflow_id)
    assert result.status == "closed" and result.exit_reason == "closed_on_exchange"
    assert result.exit_price == D("0.1330") and result.realized_pnl == (D("0.1330") - D("0.13012")) * 46
    assert await close_orders(sim_control) == []  # not 26 attempts: zero


async def test_progressive_phase_accepts_a_growing_loss(h: Harness, sim_control: SimulatorControl) -> None:
    bot = await h.bot(Exchange.BYBIT, aged=POLICY)
    view = await h.open(bot, symbol="CLOUDUSDT", usd="6")
    price = (D("0.13012") * D("0.992")).quantize(D("0.00001"))  # 0.8% under entry: the 2nd progressive hour
    await sim_control.set_price("CLOUDUSDT", price)
    result = await run_to_end(h, view.workflow_id)
    assert result.status == "closed" and result.exit_reason == "aged_progressive"
    described = await h.temporal.get_workflow_handle(view.workflow_id).describe()
    assert described.close_time is not None
    hours = (described.close_time - described.start_time).total_seconds() / H  # workflow (skipped) time
    assert 12 <= hours < 13.1, f"closed after {hours:.2f} h"  # 11 h + the second started hour
    await keep_history(h.temporal, view.workflow_id, "aged_progressive_close")


async def test_expired_closes_at_market(h: Harness, sim_control: SimulatorControl) -> None:
    bot = await h.bot(Exchange.BYBIT, aged=POLICY)
    view = await h.open(bot, symbol="CLOUDUSDT", usd="6")
    await sim_control.set_price("CLOUDUSDT", "0.1")  # far below any target
    result = await run_to_end(h, view.workflow_id)
    assert result.status == "closed" and result.exit_reason == "aged_expired" and result.exit_price == D("0.1")


async def test_ensures_running_together_share_one_start_of_the_watcher(
    ts_env: WorkflowEnvironment, deps: Deps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15 (10,000 positions): when hundreds of positions of one account age at once, each asks
    for the account's price watcher; concurrent starts of one workflow id made Temporal answer
    "Workflow is busy" and the activities retried. The ensures in flight together share one start;
    nothing is remembered after it (a watcher that has ended since is started again)."""
    client = ts_env.client
    starts: list[str] = []
    real_start = client.start_workflow

    async def counting_start(*args: object, **kwargs: object) -> object:
        starts.append(str(kwargs["id"]))
        return await real_start(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(client, "start_workflow", counting_start)
    deps.temporal = client
    watch = WatchActivities(deps)
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, task_queue=f"t-{uuid.uuid4().hex[:10]}")  # no worker: it waits
    request = WatcherInput(exchange=Exchange.BYBIT, account="aged-at-once")
    ids = await asyncio.gather(*(env.run(watch.ensure_price_watcher, request) for _ in range(50)))
    assert len(set(ids)) == 1 and starts == ids[:1]
    handle = client.get_workflow_handle(ids[0])
    assert (await handle.describe()).status is WorkflowExecutionStatus.RUNNING
    assert await env.run(watch.ensure_price_watcher, request) == ids[0]  # asks again: already running
    assert len(starts) == 2
    await handle.terminate("test finished")
