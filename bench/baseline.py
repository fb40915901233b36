"""Baseline workflows: the cheapest Temporal shapes the product's figures are compared with.

- `noop`: an activity that does nothing;
- `OneActivityWorkflow`: runs `noop` once (the throughput baseline for a position lifecycle);
- `PingWorkflow`: an update handler that runs `noop` and returns its result (the baseline for
  the manual close, which is an update that runs the close activity).
- `BurstWorkflow`: schedules N activities at once on a given task queue (section 8 sends a burst
  of the product's `read_account_positions` to an account queue served by several workers).

The bench worker (`bench/worker.py`) serves them on BASELINE_QUEUE, in the same process as the
product's workers. Like the product's workflow modules, this one imports only temporalio.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow

BASELINE_QUEUE = "egis-bench-baseline"
TIMEOUT = timedelta(seconds=60)


@activity.defn(name="bench_noop")
async def noop(seq: int) -> int:
    return seq


@workflow.defn
class OneActivityWorkflow:
    @workflow.run
    async def run(self, seq: int) -> int:
        return await workflow.execute_activity(noop, seq, start_to_close_timeout=TIMEOUT)


@workflow.defn
class PingWorkflow:
    def __init__(self) -> None:
        self._finished = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self._finished)
        await workflow.wait_condition(workflow.all_handlers_finished)

    @workflow.update
    async def ping(self, seq: int) -> int:
        return await workflow.execute_activity(noop, seq, start_to_close_timeout=TIMEOUT)

    @workflow.signal
    def finish(self) -> None:
        self._finished = True


@workflow.defn
class BurstWorkflow:
    @workflow.run
    async def run(self, burst: dict[str, Any]) -> int:
        """`{"queue", "activity", "arg", "count"}`: run `count` activities at once, wait for all."""
        calls = [
            workflow.execute_activity(
                burst["activity"], burst["arg"], task_queue=burst["queue"], start_to_close_timeout=timedelta(minutes=5)
            )
            for _ in range(int(burst["count"]))
        ]
        return len(await asyncio.gather(*calls))


WORKFLOWS = [OneActivityWorkflow, PingWorkflow, BurstWorkflow]
ACTIVITIES = [noop]
