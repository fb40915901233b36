"""Section 5: budget contention.

200 reservations at once (`Store.reserve_position`, one transaction each, concurrent asyncio
tasks, a pool of POOL connections) on ONE bot whose budget fits 3 out of 4: every reservation
locks the bot's row, so they run one after the other. Baseline: the same 200 reservations spread
over 200 bots (no lock contention). Both in a scratch database on the same server, repeated and
alternated; medians.

The invariant: overspend = max(0, reserved - budget) must be 0, and exactly budget / amount
reservations must be accepted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bench.config import Sizes
from bench.db import scratch_database
from bench.env import BenchEnv
from bench.report import Row, SectionResult
from bench.stats import median, percentile
from egis.db.store import Store
from egis.errors import BudgetExceeded
from egis.models import BotSpec, Exchange, ReserveInput, Side

NAME = "5 budget contention"
AMOUNT = Decimal(10)
ACCEPTED_SHARE = Decimal("0.75")  # the contended bot's budget fits 3 out of 4 requests
POOL = 50  # connections (and as many overflow): the requests queue for them, as in a worker


@dataclass
class Burst:
    wall_s: float
    latencies_s: list[float]
    accepted: int
    refused: int
    overspend: Decimal

    @property
    def per_s(self) -> float:
        return len(self.latencies_s) / self.wall_s

    def as_dict(self) -> dict[str, Any]:
        return {
            "wall_s": self.wall_s,
            "per_s": self.per_s,
            "p50_ms": percentile(self.latencies_s, 50) * 1000,
            "p99_ms": percentile(self.latencies_s, 99) * 1000,
            "accepted": self.accepted,
            "refused": self.refused,
            "overspend": self.overspend,
        }


async def run(env: BenchEnv, sizes: Sizes) -> SectionResult:
    n = sizes.reservations
    budget = (AMOUNT * n * ACCEPTED_SHARE).quantize(Decimal("0.01"))
    contended: list[Burst] = []
    spread: list[Burst] = []
    async with scratch_database(env, "bench_budget", pool_size=POOL) as (_, engine):
        store = Store(engine)
        for repeat in range(sizes.budget_repeats):
            contended.append(await _burst(store, [f"one-{repeat}"] * n, budget))
            spread.append(await _burst(store, [f"many-{repeat}-{i}" for i in range(n)], budget))
    overspend = max(b.overspend for b in contended)
    expected = int(budget / AMOUNT)
    wrong_count = sum(b.accepted != expected for b in contended)
    data = {
        "budget": budget,
        "amount": AMOUNT,
        "requests": n,
        "expected_accepted": expected,
        "contended": [b.as_dict() for b in contended],
        "spread": [b.as_dict() for b in spread],
    }
    counts = {"budget_overspend": float(overspend)}
    return SectionResult(NAME, _rows(contended, spread, budget, expected, wrong_count), data, counts)


async def _create_bots(store: Store, names: set[str], budget: Decimal) -> None:
    for name in sorted(names):
        spec = BotSpec(name=name, exchange=Exchange.BINANCEUSDM, account=f"acct-{name}", budget_usd=budget)
        await store.create_bot(spec, actor="bench")


async def _burst(store: Store, bots: list[str], budget: Decimal) -> Burst:
    """One reservation per entry of `bots`, all at once, each for a different symbol."""
    await _create_bots(store, set(bots), budget)

    async def reserve(i: int, bot: str) -> tuple[float, bool]:
        request = ReserveInput(
            workflow_id=f"pos-{bot}-r{i}",
            bot=bot,
            symbol=f"S{i:03d}USDT",
            side=Side.LONG,
            usd=AMOUNT,
            quantity=Decimal(1),
            exchange=Exchange.BINANCEUSDM,
            account=f"acct-{bot}",
        )
        started = time.perf_counter()
        try:
            await store.reserve_position(request, actor="bench")
            accepted = True
        except BudgetExceeded:
            accepted = False
        return time.perf_counter() - started, accepted

    started = time.perf_counter()
    results = await asyncio.gather(*(reserve(i, bot) for i, bot in enumerate(bots)))
    wall = time.perf_counter() - started
    accepted = sum(ok for _, ok in results)
    overspend = Decimal(0)  # max(0, reserved - budget) over the bots
    for bot in set(bots):
        view = await store.budget(bot)
        overspend = max(overspend, view.reserved_usd - view.budget_usd)
    return Burst(wall, [seconds for seconds, _ in results], accepted, len(results) - accepted, overspend)


def _rows(contended: list[Burst], spread: list[Burst], budget: Decimal, expected: int, wrong: int) -> list[Row]:
    n = len(contended[0].latencies_s)
    base = f"same requests over {n} bots"
    last = contended[-1]
    p99_contended = median(percentile(b.latencies_s, 99) * 1000 for b in contended)
    p99_spread = median(percentile(b.latencies_s, 99) * 1000 for b in spread)
    rate_contended, rate_spread = median(b.per_s for b in contended), median(b.per_s for b in spread)
    return [
        Row(NAME, f"reservations/s, {n} at once on one bot", rate_contended, rate_spread, base),
        Row(NAME, "  p99 latency (ms)", p99_contended, p99_spread, base),
        Row(
            NAME, f"  accepted / refused (budget ${budget})", f"{last.accepted} / {last.refused}", expected, "expected"
        ),
        Row(NAME, "  runs with a wrong accepted count", wrong, 0, "expected"),
        Row(NAME, "budget_overspend (USD, max over runs)", float(max(b.overspend for b in contended)), 0, "must be 0"),
    ]
