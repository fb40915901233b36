"""Section 8: an account's rate limit across several workers, measured at the exchange.

Three worker processes serve the same Bybit account queue: the bench worker and two more
(`python -m bench.account_worker`: the product's account-queue workers, `worker.AccountWorkers`,
for these accounts only, as replicas serving them would). The account's queue limit is the
exchange's default (Bybit: 10 activities/s), set once on the cluster by the workers
(`egis/queues.py`). A burst of the product's `read_account_positions` activity (one positions
request each) is scheduled at once on the account queue, and the simulator's request log gives
the requests per second for that account over every 10 s window (the maximum is reported).
Baseline: the same burst, the same three workers, on an account whose file sets no limit
(`activities_per_second: 0`). Count invariant `rate_limit_exceeded`: requests the limited account
received while the 10 s before them already held the venue limit's worth (10 s x 10/s).
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from typing import Any

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from bench.baseline import BASELINE_QUEUE, BurstWorkflow
from bench.config import Sizes
from bench.env import BOT_BUDGET, Account, BenchEnv, BenchError
from bench.report import Row, SectionResult
from egis.exchanges.accounts import AccountConfig, write_account
from egis.models import BotSpec, Exchange, account_task_queue
from egis.queues import queue_rate_limit
from egis.stack.processes import spawn, stop_process
from worker import ACTIVITIES_PER_SECOND, QUEUE_HEADROOM

NAME = "8 rate limit"
WORKERS = 3  # the bench worker + 2 account workers
WINDOW_S = 10.0
WARM_UP = 12  # activities per account first: every worker builds its gateway (markets, clock) before the burst


async def run(env: BenchEnv, sizes: Sizes) -> SectionResult:
    limit = ACTIVITIES_PER_SECOND[Exchange.BYBIT]
    assert limit is not None
    tag = uuid.uuid4().hex[:4]
    limited = Account(f"bench-rl-{tag}-limited", Exchange.BYBIT, f"bench-rl-{tag}-limited-key")
    free = Account(f"bench-rl-{tag}-free", Exchange.BYBIT, f"bench-rl-{tag}-free-key")
    for account, per_second in ((limited, None), (free, 0.0)):
        config = AccountConfig(
            exchange=account.exchange,
            api_key=account.api_key,
            secret=f"{account.ref}-secret",
            base_url=env.sim.base_url,
            activities_per_second=per_second,  # None: the exchange's default limit
            stream=False,  # only the burst's requests in the window
        )
        write_account(env.settings.resolved_accounts_dir, account.ref, config)
        spec = BotSpec(name=account.ref, exchange=account.exchange, account=account.ref, budget_usd=BOT_BUDGET)
        await env.client.create_bot(spec, actor="bench")
    await env.control.add_api_keys({a.api_key: f"{a.ref}-secret" for a in (limited, free)})
    queues = {a.ref: account_task_queue(env.settings.task_queue, a.exchange, a.ref) for a in (limited, free)}
    child_env = env.stack.child_env() | {"EGIS_METRICS_PORT": "0", "EGIS_SDK_METRICS_PORT": "0"}
    specs = [f"{a.exchange.value}:{a.ref}" for a in (limited, free)]
    extra = [
        await spawn([sys.executable, "-m", "bench.account_worker", *specs], env=child_env) for _ in range(WORKERS - 1)
    ]
    try:
        for queue in queues.values():
            await _wait_for_pollers(env, queue, WORKERS, extra)
        configured = await queue_rate_limit(env.temporal, queues[limited.ref])
        for account in (limited, free):
            await _burst(env, queues[account.ref], account, WARM_UP)
        await asyncio.sleep(WINDOW_S)  # the warm-up's requests leave the window
        measured: dict[str, dict[str, Any]] = {}
        for name, account in (("free", free), ("limited", limited)):
            started = time.time()
            await _burst(env, queues[account.ref], account, sizes.rate_burst)
            finished = time.time()
            log = await env.control.requests()
            times = sorted(
                e["time_ms"] / 1000
                for e in log
                if e.get("api_key") == account.api_key and started - 0.5 <= e["time_ms"] / 1000 <= finished + 0.5
            )
            peak = _max_in_window(times, WINDOW_S)
            measured[name] = {
                "requests": len(times),
                "seconds": round(finished - started, 2),
                "max_requests_in_10s": peak,
                "max_per_second_10s": peak / WINDOW_S,
                "max_in_1s": _max_in_window(times, 1.0),
                "windows_over_limit": _windows_over(times, WINDOW_S, limit * WINDOW_S),
            }
    finally:
        await asyncio.gather(*(stop_process(p) for p in extra))
    data = {
        "workers": WORKERS,
        "burst": sizes.rate_burst,
        "limit_per_second": limit,
        "cluster_side_limit": configured,
        "measured": measured,
    }
    counts = {"rate_limit_exceeded": float(measured["limited"]["windows_over_limit"])}
    return SectionResult(NAME, _rows(data), data, counts)


async def _wait_for_pollers(env: BenchEnv, queue: str, count: int, extra: list[asyncio.subprocess.Process]) -> None:
    request = DescribeTaskQueueRequest(
        namespace=env.temporal.namespace,
        task_queue=TaskQueue(name=queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
    )
    deadline = asyncio.get_running_loop().time() + 300  # the bench worker discovers accounts every 5 s
    while True:
        pollers = (await env.temporal.workflow_service.describe_task_queue(request)).pollers
        if len({p.identity for p in pollers}) >= count:
            return
        for proc in extra:
            if proc.returncode is not None:
                raise BenchError(f"an account worker exited with code {proc.returncode}")
        if asyncio.get_running_loop().time() > deadline:
            raise BenchError(f"only {len(pollers)} of {count} workers poll {queue}")
        await asyncio.sleep(0.5)


async def _burst(env: BenchEnv, queue: str, account: Account, count: int) -> None:
    burst = {
        "queue": queue,
        "activity": "read_account_positions",
        "arg": {"exchange": account.exchange.value, "account": account.ref},
        "count": count,
    }
    done = await env.temporal.execute_workflow(
        BurstWorkflow.run, burst, id=f"burst-{uuid.uuid4().hex[:8]}", task_queue=BASELINE_QUEUE
    )
    if done != count:
        raise BenchError(f"the burst ran {done} of {count} activities")


def _max_in_window(times: list[float], window: float) -> int:
    """The most requests in any window of `window` seconds (two pointers over sorted times)."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def _windows_over(times: list[float], window: float, allowed: float) -> int:
    """How many requests ended a window of `window` seconds holding more than `allowed` requests."""
    over, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        over += end - start + 1 > allowed
    return over


def _rows(data: dict[str, Any]) -> list[Row]:
    limited, free = data["measured"]["limited"], data["measured"]["free"]
    baseline = "same burst and workers, account without a queue limit"
    return [
        Row(
            NAME,
            f"max requests/s per account, any 10 s window ({data['workers']} workers)",
            limited["max_per_second_10s"],
            free["max_per_second_10s"],
            baseline,
        ),
        Row(NAME, "  max requests in any 1 s window", limited["max_in_1s"], free["max_in_1s"], baseline),
        Row(NAME, "  the venue's limit (Bybit, requests/s per account)", data["limit_per_second"]),
        Row(
            NAME,
            f"  the queue's limit on the cluster (activities/s, {QUEUE_HEADROOM:.0%} of it)",
            data["cluster_side_limit"],
        ),
        Row(NAME, "  burst duration (s)", limited["seconds"], free["seconds"], baseline),
        Row(NAME, "  requests in the burst (one per activity)", limited["requests"], free["requests"], baseline),
    ]
