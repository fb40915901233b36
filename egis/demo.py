"""`egis demo`: the main job a newcomer runs.

Brings the embedded stack up (or uses the one `egis dev up` is running for this data dir),
runs the scenarios, prints a table of what happened and the web UI URL, and shuts down
(`--keep` leaves the stack up until Ctrl-C).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal

from egis.client import EgisClient
from egis.config import Settings
from egis.db import store as db
from egis.errors import DuplicateBot
from egis.models import BotSpec, Exchange, ReserveInput, Side
from egis.output import table
from egis.stack.stack import Stack

DEMO_ACTOR = "demo"


@dataclass
class Step:
    scenario: str
    expected: str
    observed: str
    ok: bool


@dataclass
class DemoReport:
    steps: list[Step] = field(default_factory=list)

    def add(self, scenario: str, expected: str, observed: str, ok: bool) -> None:
        self.steps.append(Step(scenario, expected, observed, ok))
        mark = "ok " if ok else "FAIL"
        print(f"  [{mark}] {scenario}: {observed}", flush=True)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)


@contextlib.asynccontextmanager
async def demo_stack(settings: Settings) -> AsyncIterator[tuple[Settings, str | None, Stack | None]]:
    """Use configured servers, or the running `egis dev up`, or start the embedded stack."""
    running = settings.running_stack()
    if settings.database_url and settings.temporal_address:
        yield settings, None, None
        return
    if running:
        print(f"using the stack already running for {settings.data_dir} (egis dev up)")
        attached = settings.model_copy(
            update={"database_url": running["database_url"], "temporal_address": running["temporal_address"]}
        )
        yield attached, running.get("ui_url") or None, None
        return
    print("starting the embedded stack (PostgreSQL, Temporal, worker) ...", flush=True)
    started = time.monotonic()
    stack = Stack(settings, worker_log=settings.data_dir / "logs" / "worker.log")
    await stack.start()
    print(f"stack up in {time.monotonic() - started:.1f}s", flush=True)
    try:
        attached = settings.model_copy(
            update={"database_url": stack.database_url, "temporal_address": stack.temporal_address}
        )
        yield attached, stack.ui_url, stack
    finally:
        await stack.stop()


async def ensure_bot(client: EgisClient, spec: BotSpec) -> None:
    with contextlib.suppress(DuplicateBot):
        await client.create_bot(spec, actor=DEMO_ACTOR)


async def scenario_budget(client: EgisClient, report: DemoReport, run_id: str) -> None:
    bot = "demo-paper"
    await ensure_bot(client, BotSpec(name=bot, exchange=Exchange.PAPER, account="paper-demo", budget_usd=1000))
    before = await client.budget(bot)
    async with client.engine.begin() as conn:
        reserved = await db.reserve_position(
            conn,
            ReserveInput(
                workflow_id=f"demo-budget-{run_id}",
                bot=bot,
                symbol="BTCUSDT",
                side=Side.LONG,
                usd=Decimal(250),
                quantity=Decimal("0.004"),
                exchange=Exchange.PAPER,
                account="paper-demo",
            ),
            actor=DEMO_ACTOR,
        )
    during = await client.budget(bot)
    async with client.engine.begin() as conn:
        await db.fail_open(conn, reserved.position_id, "demo: released without sending an order", actor=DEMO_ACTOR)
    after = await client.budget(bot)
    report.add(
        "budget reserve/release",
        "available drops by $250 then returns",
        f"available ${before.available_usd} -> ${during.available_usd} -> ${after.available_usd}",
        during.available_usd == before.available_usd - 250 and after.available_usd == before.available_usd,
    )


async def run_demo(settings: Settings, *, keep: bool = False) -> int:
    run_id = time.strftime("%Y%m%d-%H%M%S")
    report = DemoReport()
    async with demo_stack(settings) as (effective, ui_url, stack):
        async with EgisClient.from_settings(effective) as client:
            health = await client.health(timeout=60)
            report.add(
                "health workflow",
                "a workflow runs through the worker and reaches the database",
                f"worker on {health.worker_identity}, database {health.database} at {health.migrations_head}",
                health.migrations_head is not None,
            )
            await scenario_budget(client, report, run_id)
        print()
        print(
            table(
                [s.__dict__ for s in report.steps],
                ["scenario", "expected", "observed", "ok"],
                title="Egis demo",
            )
        )
        if ui_url:
            print(f"\nTemporal web UI: {ui_url}")
        if keep and stack is not None:
            print("--keep: the stack stays up; Ctrl-C stops it", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
    return 0 if report.ok else 1
