"""Section 1: manual close latency.

Egis: `EgisClient.close_position(wait=True)` (the `request_close` update) on an open Binance
position, until the update returns (the close activity has committed the closed row; each one
is checked in the database afterwards). Baselines, interleaved one by one with the closes so
noise hits all three alike:
(a) the same close activity, `PositionActivities.close_position`, called directly in asyncio
    (temporalio.testing.ActivityEnvironment) on an equivalent open position: no Temporal;
(b) an update -> no-op activity -> result round trip (`PingWorkflow.ping`) on the same server
    and worker; a fresh PingWorkflow every PINGS_PER_WORKFLOW updates, so its history stays as
    short as a position's (a server's mutable state grows with every completed update).
The positions are opened beforehand through PositionWorkflow (not timed).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio.client import WorkflowHandle
from temporalio.testing import ActivityEnvironment

from activities.deps import Deps
from activities.positions import PositionActivities
from bench.baseline import BASELINE_QUEUE, PingWorkflow
from bench.config import Sizes
from bench.env import BenchEnv, BenchError, Opened
from bench.report import Row, SectionResult
from bench.stats import summary, timed
from egis.models import CloseInput, CloseRequest, ExternalClose
from workflows.position import PositionWorkflow

NAME = "1 manual close"
WARMUP_PINGS = 5
PINGS_PER_WORKFLOW = 4  # a position's history has ~35 events when it is closed; 4 updates make ~40


async def run(env: BenchEnv, sizes: Sizes) -> SectionResult:
    opened = await env.open_positions(env.slots("lc")[: 2 * sizes.closes], "close")
    by_egis, direct = opened[0::2], opened[1::2]
    deps = Deps.build(env.settings, env.client.engine)
    try:
        await _warm_gateways(deps, direct)
        latencies = await _interleaved(env, deps, by_egis, direct, sizes.closes)
    finally:
        await deps.gateways.close()
    await _finish_directly_closed(env, direct)
    rows = await env.position_rows(o.workflow_id for o in opened)
    not_closed = sum(row["status"] != "closed" for row in rows.values())
    stats = {name: summary(values, 1000) for name, values in latencies.items()}
    return SectionResult(NAME, _rows(stats, not_closed), {"latency_ms": stats, "not_closed": not_closed})


async def _warm_gateways(deps: Deps, positions: list[Opened]) -> None:
    """The worker's gateways are warm (they opened the positions); warm this process's too."""
    for account in {o.slot.account for o in positions}:
        await (await deps.gateways.get(account.exchange, account.ref)).load_markets()


async def _interleaved(
    env: BenchEnv, deps: Deps, by_egis: list[Opened], direct: list[Opened], n: int
) -> dict[str, list[float]]:
    activities = PositionActivities(deps)
    activity_env = ActivityEnvironment()
    pings = _Pings(env)
    for _ in range(WARMUP_PINGS):
        await pings.ready()
        await pings.ping()
    latencies: dict[str, list[float]] = {"egis": [], "direct": [], "ping": []}
    for i in range(n):
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("egis", lambda o=by_egis[i]: env.client.close_position(o.workflow_id, CloseRequest(), wait=True)),
            (
                "direct",
                lambda o=direct[i]: activity_env.run(
                    activities.close_position, CloseInput(position_id=o.position_id, reason="manual", attempt=1)
                ),
            ),
            ("ping", pings.ping),
        ]
        for name, step in steps[i % 3 :] + steps[: i % 3]:  # rotate, so no kind always runs first
            if name == "ping":
                await pings.ready()
            seconds, result = await timed(step)
            if name != "ping" and getattr(result, "status", None) != "closed":  # a CloseResult
                raise BenchError(f"{name} close of position {i} ended {result}")
            latencies[name].append(seconds)
    await pings.finish()
    return latencies


class _Pings:
    """Baseline (b): update -> no-op activity round trips, on a fresh PingWorkflow every
    PINGS_PER_WORKFLOW updates; starting it and its first, warm-up, update are not timed."""

    def __init__(self, env: BenchEnv) -> None:
        self.env = env
        self.handle: WorkflowHandle[Any, Any] | None = None
        self.on_handle = 0

    async def ready(self) -> None:
        if self.handle is not None and self.on_handle < PINGS_PER_WORKFLOW:
            return
        await self.finish()
        workflow_id = f"ping-{uuid.uuid4().hex[:8]}"
        self.handle = await self.env.temporal.start_workflow(
            PingWorkflow.run, id=workflow_id, task_queue=BASELINE_QUEUE
        )
        await self.handle.execute_update(PingWorkflow.ping, 0)
        self.on_handle = 1

    async def ping(self) -> int:
        assert self.handle is not None, "call ready() first"
        self.on_handle += 1
        return await self.handle.execute_update(PingWorkflow.ping, self.on_handle)

    async def finish(self) -> None:
        if self.handle is not None:
            await self.handle.signal(PingWorkflow.finish)
            self.handle = None


async def _finish_directly_closed(env: BenchEnv, direct: list[Opened]) -> None:
    """Baseline (a) closed rows behind their workflows' backs: tell them, as maintenance jobs do."""
    for opened in direct:
        handle = env.temporal.get_workflow_handle(opened.workflow_id)
        await handle.signal(PositionWorkflow.external_close, ExternalClose(reason="bench direct close"))
    for opened in direct:
        await env.temporal.get_workflow_handle(opened.workflow_id).result()


def _rows(stats: dict[str, dict[str, float]], not_closed: int) -> list[Row]:
    direct, ping = "close activity called directly (a)", "update -> no-op activity (b)"
    rows = []
    for pct in ("p50", "p95", "p99"):
        egis = stats["egis"][pct]
        rows.append(Row(NAME, f"close update -> closed in DB {pct} (ms)", egis, stats["direct"][pct], direct))
        rows.append(Row(NAME, f"  same {pct}, vs trivial update (ms)", egis, stats["ping"][pct], ping))
    rows.append(Row(NAME, "closes (each baseline: as many)", stats["egis"]["n"]))
    rows.append(Row(NAME, "positions not closed afterwards", not_closed, 0, "expected"))
    return rows
