"""Section 2: lifecycle throughput on ONE worker process.

Egis: N PositionWorkflows started at once, each sent its `close` signal right after the start
(the workflow closes as soon as it is open), through `EgisClient` like a bot would; the run ends
when every workflow has returned. Baseline: N one-activity workflows (`OneActivityWorkflow`) on
the same server and the same worker process, measured before and after the lifecycles (the
mean of both runs is the baseline). Untimed warm-up first: baseline workflows, and one lifecycle
per account (the worker builds an account's exchange client on first use).

Throughput is N over the server's span (first workflow start -> last workflow close, from
`describe`); CPU seconds come from /proc (psutil) for the worker, Temporal and PostgreSQL (with
its backends), and the benchmark process itself (client and simulator). History lengths are
exact (fetch_history of every workflow).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from temporalio.client import WorkflowHandle

from bench.baseline import BASELINE_QUEUE, OneActivityWorkflow
from bench.config import Sizes
from bench.env import POSITION_USD, START_CONCURRENCY, BenchEnv, Slot
from bench.report import Row, SectionResult
from bench.stats import CpuMeter
from egis.models import CloseRequest, OpenPositionInput, PositionResult, Side

NAME = "2 throughput"
WARMUP = 20


@dataclass
class Run:
    n: int
    span_s: float  # first start -> last close (server clock)
    wall_s: float
    cpu_s: dict[str, float]
    history_events: Counter[int]
    outcomes: Counter[str]

    @property
    def per_s(self) -> float:
        return self.n / self.span_s

    def cpu_per_item_ms(self) -> dict[str, float]:
        return {name: seconds / self.n * 1000 for name, seconds in self.cpu_s.items()}

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "span_s": self.span_s,
            "wall_s": self.wall_s,
            "per_s": self.per_s,
            "cpu_s": self.cpu_s,
            "cpu_ms_per_item": self.cpu_per_item_ms(),
            "history_events": dict(self.history_events),
            "outcomes": dict(self.outcomes),
        }


async def run(env: BenchEnv, sizes: Sizes) -> SectionResult:
    await _baseline(env, WARMUP, "warm")
    await _lifecycles(env, env.slots("lc")[: len(env.accounts["lc"])], "tpwarm")  # each account's gateway
    before = await _baseline(env, sizes.lifecycles, "base1")
    egis = await _lifecycles(env, env.slots("lc")[: sizes.lifecycles], "tp")
    after = await _baseline(env, sizes.lifecycles, "base2")
    data = {"egis": egis.as_dict(), "baseline_before": before.as_dict(), "baseline_after": after.as_dict()}
    return SectionResult(NAME, _rows(egis, before, after), data)


async def _measure(
    env: BenchEnv, start: Callable[[int], Awaitable[WorkflowHandle[Any, Any]]], n: int, outcome: Callable[[Any], str]
) -> Run:
    gate = asyncio.Semaphore(START_CONCURRENCY)

    async def one(i: int) -> tuple[WorkflowHandle[Any, Any], str]:
        async with gate:
            handle = await start(i)
        return handle, outcome(await handle.result())

    meter = CpuMeter(env.pids())
    meter.start()
    started = time.perf_counter()
    done = await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - started
    cpu = meter.stop()
    handles = [handle for handle, _ in done]
    span = await _server_span(handles)
    histories = Counter(await asyncio.gather(*(_history_length(h) for h in handles)))
    return Run(n, span, wall, cpu, histories, Counter(result for _, result in done))


async def _baseline(env: BenchEnv, n: int, tag: str) -> Run:
    prefix = f"bench-{tag}-{uuid.uuid4().hex[:6]}"

    async def start(i: int) -> WorkflowHandle[Any, Any]:
        return await env.temporal.start_workflow(
            OneActivityWorkflow.run, i, id=f"{prefix}-{i}", task_queue=BASELINE_QUEUE
        )

    return await _measure(env, start, n, lambda result: "ok")


async def _lifecycles(env: BenchEnv, slots: list[Slot], tag: str) -> Run:
    async def start(i: int) -> WorkflowHandle[Any, Any]:
        slot = slots[i]
        request = OpenPositionInput(
            bot=slot.account.ref, symbol=slot.symbol, side=Side.LONG, usd=POSITION_USD, ref=f"{tag}-{i}"
        )
        view = await env.client.open_position(request, wait=None)
        await env.client.close_position(view.workflow_id, CloseRequest(), wait=False)
        return env.temporal.get_workflow_handle(view.workflow_id, result_type=PositionResult)

    return await _measure(env, start, len(slots), lambda result: f"{result.status}/{result.exit_reason}")


async def _server_span(handles: list[WorkflowHandle[Any, Any]]) -> float:
    gate = asyncio.Semaphore(START_CONCURRENCY)

    async def describe(handle: WorkflowHandle[Any, Any]) -> tuple[float, float]:
        async with gate:
            d = await handle.describe()
        assert d.close_time is not None
        return d.start_time.timestamp(), d.close_time.timestamp()

    times = await asyncio.gather(*(describe(h) for h in handles))
    return max(close for _, close in times) - min(start for start, _ in times)


async def _history_length(handle: WorkflowHandle[Any, Any]) -> int:
    return len((await handle.fetch_history()).events)


def _events(run: Run) -> str | int:
    """The exact history length, or its range if runs differ (e.g. a retried activity)."""
    lengths = sorted(run.history_events)
    return lengths[0] if len(lengths) == 1 else f"{lengths[0]}..{lengths[-1]}"


def _rows(egis: Run, before: Run, after: Run) -> list[Row]:
    base = "one-activity workflow, same worker"
    base_rate = (before.per_s + after.per_s) / 2
    egis_cpu, before_cpu, after_cpu = egis.cpu_per_item_ms(), before.cpu_per_item_ms(), after.cpu_per_item_ms()
    rows = [
        Row(NAME, f"lifecycles/s (open -> close, N={egis.n})", egis.per_s, base_rate, base + " (wf/s)"),
        Row(NAME, "  wall time, start -> last result (s)", egis.wall_s, (before.wall_s + after.wall_s) / 2, base),
    ]
    for process in egis_cpu:
        rows.append(
            Row(
                NAME,
                f"  CPU ms per lifecycle: {process}",
                egis_cpu[process],
                (before_cpu[process] + after_cpu[process]) / 2,
                base + " (per workflow)",
            )
        )
    rows.append(Row(NAME, "history events per lifecycle (exact)", _events(egis), _events(before), base))
    outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(egis.outcomes.items()))
    rows.append(Row(NAME, "lifecycle outcomes", outcomes, egis.n, "lifecycles started"))
    return rows
