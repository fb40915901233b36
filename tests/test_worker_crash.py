"""The worker dies (kill -9 semantics) after the close order reached the exchange and before
the database knows; a new worker takes over: the position ends closed, and the exchange saw
exactly one close order."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

from sqlalchemy import select
from temporalio import activity
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.common import heartbeating
from chaos import invariants
from egis.client import EgisClient
from egis.config import Settings
from egis.db.schema import orders, positions
from egis.models import BotSpec, CloseRequest, Exchange, OpenPositionInput, PositionResult
from egis.simulator.control import SimulatorControl
from tests.conftest import ACCOUNTS, SIM_KEYS

D = Decimal


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "worker"], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def test_worker_killed_between_exchange_fill_and_db_write(
    temporal_env: WorkflowEnvironment,
    database_url: str,
    accounts_dir: Path,
    sim_control: SimulatorControl,
    tmp_path: Path,
) -> None:
    queue = f"crash-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        database_url=database_url,
        temporal_address=temporal_env.client.service_client.config.target_host,
        task_queue=queue,
        accounts_dir=accounts_dir,
        data_dir=tmp_path / ".egis",
    )
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": settings.temporal_address or "",
        "EGIS_TASK_QUEUE": queue,
        "EGIS_ACCOUNTS_DIR": str(accounts_dir),
        "EGIS_DATA_DIR": str(tmp_path / ".egis"),
        "EGIS_METRICS_PORT": "0",
        "EGIS_SDK_METRICS_PORT": "0",
        # no maintenance schedules: a sync run they start on the minute may still be running when the
        # workers are stopped, and the invariants below want this queue quiet (schedules: test_schedules_auto)
        "EGIS_AUTO_SCHEDULES": "0",
    }
    log = tmp_path / "worker.log"
    async with EgisClient.from_settings(settings) as client:
        await client.create_bot(
            BotSpec(name="crashy", exchange=Exchange.BINANCEUSDM, account=ACCOUNTS["binanceusdm"], budget_usd=D(1000)),
            actor="test",
        )
        first = start_worker({**env, "EGIS_FAILPOINTS": "after_close_submit=crash"}, log)
        second = None
        try:
            request = OpenPositionInput(bot="crashy", symbol="BTCUSDT", side="long", usd=D("120"), ref="k1")
            view = await client.open_position(request)
            assert view.status == "open"
            await client.close_position(view.workflow_id, CloseRequest(reason="manual"), wait=False)
            code = await asyncio.wait_for(asyncio.to_thread(first.wait), 30)
            assert code == 137, f"the failpoint should have killed the worker (exit {code})"

            key = SIM_KEYS["binanceusdm"][0]
            accepted = [o for o in await sim_control.orders(key) if o["reduce_only"] and o["outcome"] == "accepted"]
            assert len(accepted) == 1  # the close reached the exchange...
            async with client.engine.connect() as conn:
                close_order = (await conn.execute(select(orders).where(orders.c.intent == "close"))).mappings().one()
            assert close_order["status"] == "pending" and close_order["submissions"] == 1  # ...the DB never heard

            second = start_worker(env, log)
            handle = temporal_env.client.get_workflow_handle(view.workflow_id, result_type=PositionResult)
            result = await asyncio.wait_for(handle.result(), 90)
            assert result.status == "closed" and result.exit_reason == "manual"
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    await asyncio.to_thread(proc.wait)

        accepted = [o for o in await sim_control.orders(key) if o["reduce_only"] and o["outcome"] == "accepted"]
        assert len(accepted) == 1, "the retry looked the order up instead of sending it again"
        assert await sim_control.positions(key) == []
        async with client.engine.connect() as conn:
            row = (await conn.execute(select(positions))).mappings().one()
            close_order = (await conn.execute(select(orders).where(orders.c.intent == "close"))).mappings().one()
        assert row["status"] == "closed" and row["exit_price"] == D("60000")
        assert close_order["status"] == "filled" and close_order["submissions"] == 1
        violations = await invariants.check(
            client.engine, sim_control, {"sim-binance": key}, temporal_env.client, queue
        )
        assert violations == []


async def test_heartbeats_start_after_the_interval_not_at_once() -> None:
    """A dead worker is noticed by the heartbeat timeout, which counts from the activity's start:
    an open or a close that takes milliseconds needs no beat (each is an RPC and a write on the
    Temporal server; issue 15). One that runs longer beats every interval."""
    beats: list[tuple[object, ...]] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)

    @activity.defn(name="runs_for")
    async def runs_for(seconds: float, every: float) -> None:
        async with heartbeating(every=every):
            await asyncio.sleep(seconds)

    await env.run(runs_for, 0.05, 1.0)
    assert beats == []
    await env.run(runs_for, 0.6, 0.1)
    assert len(beats) >= 2  # ~5 (fewer on a loaded machine)
