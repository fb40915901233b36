"""Section 9: a manual close while its account's queue is saturated.

A Bybit account whose queue has the exchange's default limit (10 requests/s, 8 activities/s on
the cluster: `egis/queues.py`) holds five open positions. A burst of `busy_backlog` reads (the
product's `read_account_positions`, the default priority, as exchange syncs and aged checks
are) is scheduled on its queue, which makes a backlog of several seconds. While it drains, the
five positions are closed one after the other (`close_position(wait=True)`, the update) and,
at the same moment as each close, one more read is scheduled at the default priority: the
wait of a task that is queued behind the backlog in FIFO order, which is what a close waited
before closes had a priority (the baseline). Then the same close on an idle queue (a second
round on the same account, after the backlog drained).

`rounds` rounds, each on a fresh account (five symbols each), so every close is the first on
its position.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from temporalio.client import WorkflowHandle

from bench.baseline import BASELINE_QUEUE, BurstWorkflow
from bench.config import SYMBOLS, Sizes
from bench.env import BOT_BUDGET, POSITION_USD, Account, BenchEnv, BenchError
from bench.rate_limit import _wait_for_pollers
from bench.report import Row, SectionResult
from bench.stats import summary
from egis.exchanges.accounts import AccountConfig, write_account
from egis.models import BotSpec, CloseRequest, Exchange, OpenPositionInput, Side, account_task_queue

NAME = "9 close on a busy queue"
BUILD_UP_S = 1.0  # after the burst is scheduled, before the first close: the backlog is there


async def run(env: BenchEnv, sizes: Sizes) -> SectionResult:
    latencies: dict[str, list[float]] = {"busy": [], "fifo": [], "idle": []}
    for _ in range(sizes.busy_rounds):
        account, queue = await _account(env)
        await _round(env, account, queue, sizes.busy_backlog, latencies, busy=True)
        await _round(env, account, queue, 0, latencies, busy=False)
    stats = {name: summary(values, 1000) for name, values in latencies.items()}
    data = {"latency_ms": stats, "backlog": sizes.busy_backlog, "rounds": sizes.busy_rounds}
    return SectionResult(NAME, _rows(stats, sizes.busy_backlog), data)


async def _account(env: BenchEnv) -> tuple[Account, str]:
    tag = uuid.uuid4().hex[:4]
    account = Account(f"bench-pq-{tag}", Exchange.BYBIT, f"bench-pq-{tag}-key")
    config = AccountConfig(
        exchange=account.exchange,
        api_key=account.api_key,
        secret=f"{account.ref}-secret",
        base_url=env.sim.base_url,
        activities_per_second=None,  # the exchange's default limit
        stream=False,
    )
    write_account(env.settings.resolved_accounts_dir, account.ref, config)
    await env.control.add_api_keys({account.api_key: f"{account.ref}-secret"})
    spec = BotSpec(name=account.ref, exchange=account.exchange, account=account.ref, budget_usd=BOT_BUDGET)
    await env.client.create_bot(spec, actor="bench")
    queue = account_task_queue(env.settings.task_queue, account.exchange, account.ref)
    await _wait_for_pollers(env, queue, 1, [])
    return account, queue


async def _round(
    env: BenchEnv,
    account: Account,
    queue: str,
    backlog: int,
    latencies: dict[str, list[float]],
    *,
    busy: bool,
) -> None:
    round_tag = uuid.uuid4().hex[:6]
    views = await asyncio.gather(
        *(
            env.client.open_position(
                OpenPositionInput(bot=account.ref, symbol=s, side=Side.LONG, usd=POSITION_USD, ref=f"pq{round_tag}{s}")
            )
            for s in SYMBOLS
        )
    )
    if any(v.status != "open" for v in views):
        raise BenchError(f"section 9: opens ended {[v.status for v in views]}")
    burst: WorkflowHandle | None = None  # type: ignore[type-arg]
    if busy:
        burst = await _start_burst(env, queue, account, backlog)
        await asyncio.sleep(BUILD_UP_S)
    probes: list[asyncio.Task[float]] = []
    for view in views:
        if busy:
            probes.append(asyncio.create_task(_probe(env, queue, account)))
        started = time.perf_counter()
        result = await env.client.close_position(view.workflow_id, CloseRequest(), wait=True)
        latencies["busy" if busy else "idle"].append(time.perf_counter() - started)
        if result is None or result.status != "closed":
            raise BenchError(f"section 9: a close ended {result}")
    latencies["fifo"].extend(await asyncio.gather(*probes))
    if burst is not None:
        done = await burst.result()
        if done != backlog:
            raise BenchError(f"section 9: the burst ran {done} of {backlog} activities")


async def _probe(env: BenchEnv, queue: str, account: Account) -> float:
    """Seconds from scheduling one default-priority read on the queue to its completion."""
    started = time.perf_counter()
    await (await _start_burst(env, queue, account, 1)).result()
    return time.perf_counter() - started


async def _start_burst(env: BenchEnv, queue: str, account: Account, count: int) -> WorkflowHandle:  # type: ignore[type-arg]
    burst = {
        "queue": queue,
        "activity": "read_account_positions",
        "arg": {"exchange": account.exchange.value, "account": account.ref},
        "count": count,
    }
    return await env.temporal.start_workflow(
        BurstWorkflow.run, burst, id=f"burst-{uuid.uuid4().hex[:8]}", task_queue=BASELINE_QUEUE
    )


def _rows(stats: dict[str, dict[str, float]], backlog: int) -> list[Row]:
    fifo = f"a default-priority read queued at the same moment ({backlog} queued before it)"
    return [
        Row(NAME, "manual close p50, busy account queue (ms)", stats["busy"]["p50"], stats["fifo"]["p50"], fifo),
        Row(NAME, "manual close p99, busy account queue (ms)", stats["busy"]["p99"], stats["fifo"]["p99"], fifo),
        Row(
            NAME,
            "manual close p50, busy vs idle queue (ms)",
            stats["busy"]["p50"],
            stats["idle"]["p50"],
            "the same close, same account, idle queue",
        ),
    ]
