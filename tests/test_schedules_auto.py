"""Maintenance runs without being asked (issue 11): on a fresh embedded stack with nothing but a
bot on a new account, the worker itself creates the maintenance schedules (safe defaults) and
the account's exchange sync, which finds a position closed on the exchange; an operator's
choices (a paused schedule, --reconcile-fix) survive a worker restart."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path

from egis import schedules
from egis.client import EgisClient
from egis.config import Settings
from egis.exchanges.accounts import AccountConfig, write_account
from egis.models import BotSpec, Exchange, OpenPositionInput
from egis.simulator.control import SimulatorControl
from egis.simulator.server import start_simulator
from egis.stack.processes import free_port
from egis.stack.stack import Stack
from tests.lifecycle import eventually

KEY, SECRET = "auto-sched-key", "auto-sched-secret"


async def test_a_fresh_stack_schedules_maintenance_and_syncs_a_new_account(tmp_path: Path) -> None:
    sim = await start_simulator(api_keys={KEY: SECRET})
    settings = Settings(
        data_dir=tmp_path / ".egis",
        temporal_port=free_port(),
        temporal_ui_port=free_port(),
        postgres_port=free_port(),
        metrics_port=0,
        sdk_metrics_port=0,
        task_queue="auto",
        accounts_dir=tmp_path / "accounts",
    )
    write_account(
        settings.resolved_accounts_dir,
        "bybit-new",
        AccountConfig(exchange=Exchange.BYBIT, api_key=KEY, secret=SECRET, base_url=sim.base_url, timeout_ms=1500),
    )
    stack = Stack(
        settings,
        ui=False,
        worker_log=tmp_path / "worker.log",
        worker_env={"EGIS_SYNC_GRACE_SECONDS": "0", "EGIS_METRICS_PORT": "0", "EGIS_SDK_METRICS_PORT": "0"},
    )
    await stack.start()
    effective = settings.model_copy(
        update={"database_url": stack.database_url, "temporal_address": stack.temporal_address}
    )
    try:
        async with EgisClient.from_settings(effective) as client, SimulatorControl(sim.base_url) as control:
            temporal = client.require_temporal()

            async def ids() -> set[str]:
                return {row["id"] for row in await schedules.list_schedules(temporal, "auto")}

            maintenance = {"auto-reconcile-paper", "auto-cleanup-phantom-shorts"}
            assert await eventually(lambda: _has(ids(), maintenance), timeout=30), await ids()
            notes = {row["id"]: row["note"] for row in await schedules.list_schedules(temporal, "auto")}
            assert "dry run" in notes["auto-reconcile-paper"] and "dry run" in notes["auto-cleanup-phantom-shorts"]

            await client.create_bot(
                BotSpec(name="newbot", exchange=Exchange.BYBIT, account="bybit-new", budget_usd=Decimal(1000)),
                actor="test",
            )
            assert await eventually(lambda: _has(ids(), {"auto-sync-bybit-bybit-new"}), timeout=30), await ids()

            request = OpenPositionInput(
                bot="newbot", symbol="BTCUSDT", side="long", usd=Decimal(120), ref=f"r-{uuid.uuid4().hex[:6]}"
            )
            view = await client.open_position(request)
            assert view.status == "open"
            await control.close_position(KEY, "BTCUSDT")  # a stop hit on the exchange; nobody asks Egis

            async def closed() -> bool:
                row = await client.store.get_position(view.position_id)  # type: ignore[arg-type]
                return row["status"] == "closed" and row["exit_reason"] == "closed_on_exchange"

            assert await eventually(closed, timeout=45, interval=1)

            # the operator's choices: cleanup paused, reconciliation with --fix
            await schedules.control(temporal, "auto", "cleanup-phantom-shorts", "pause")
            await schedules.install(
                temporal, "auto", await client.live_accounts(), schedules.Options(reconcile_fix=True)
            )
            await stack.stop_worker()
            await stack.start_worker()
            await client.require_worker(wait=60)
            await client.health(timeout=60)  # the new worker is through its start (schedules included)
            rows = {row["id"]: row for row in await schedules.list_schedules(temporal, "auto")}
            assert rows["auto-cleanup-phantom-shorts"]["paused"] is True
            assert "fixes" in rows["auto-reconcile-paper"]["note"]
            assert set(rows) == maintenance | {"auto-sync-bybit-bybit-new"}
    finally:
        await stack.stop()
        await sim.stop()


async def _has(coro, wanted: set[str]) -> bool:  # type: ignore[no-untyped-def]
    return wanted <= await coro
