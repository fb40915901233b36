"""Secrets (exchange API keys) never enter workflow inputs, Temporal history, logs or the database.

Lifecycles run through a real worker process with recognisable keys, from an account file and
from environment variables, including error paths; then every history, the worker's log and
a pg_dump of the database are searched for them. As a control, the simulator must have
received them (otherwise the search proves nothing).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from egis.client import EgisClient
from egis.config import Settings
from egis.exchanges.accounts import AccountConfig, write_account
from egis.models import BotSpec, CloseRequest, Exchange, OpenPositionInput
from egis.simulator.control import SimulatorControl
from egis.stack.postgres import EmbeddedPostgres, _bin_dir

CANARY_KEY = "EGIS-CANARY-APIKEY-7f3a9c"
CANARY_SECRET = "EGIS-CANARY-SECRET-2b8e41"
ENV_KEY = "EGIS-CANARY-ENVKEY-5d1c07"
ENV_SECRET = "EGIS-CANARY-ENVSECRET-c9a3f2"
CANARIES = (CANARY_KEY, CANARY_SECRET, ENV_KEY, ENV_SECRET)


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "worker"], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def pg_dump(port: int, database: str) -> str:
    command = [
        str(_bin_dir() / "pg_dump"),
        "--data-only",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-U",
        "postgres",
        database,
    ]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


async def test_keys_appear_in_no_history_log_or_row(
    temporal_env: WorkflowEnvironment,
    database_url: str,
    pg_server: EmbeddedPostgres,
    sim_control: SimulatorControl,
    tmp_path: Path,
) -> None:
    accounts = tmp_path / "accounts"
    write_account(
        accounts,
        "canary-file",
        AccountConfig(
            exchange=Exchange.BINANCEUSDM,
            api_key=CANARY_KEY,
            secret=CANARY_SECRET,
            base_url=sim_control.base_url,
            timeout_ms=1500,
        ),
    )
    write_account(accounts, "canary-env", AccountConfig(exchange=Exchange.BYBIT, base_url=sim_control.base_url))
    await sim_control.add_api_keys({CANARY_KEY: CANARY_SECRET, ENV_KEY: ENV_SECRET})
    queue = f"secrets-{uuid.uuid4().hex[:8]}"
    address = temporal_env.client.service_client.config.target_host
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": address,
        "EGIS_TASK_QUEUE": queue,
        "EGIS_ACCOUNTS_DIR": str(accounts),
        "EGIS_METRICS_PORT": "0",
        "EGIS_SDK_METRICS_PORT": "0",
        "EGIS_ACCOUNT_CANARY_ENV_API_KEY": ENV_KEY,
        "EGIS_ACCOUNT_CANARY_ENV_SECRET": ENV_SECRET,
        "EGIS_LOG_LEVEL": "DEBUG",
    }
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    settings = Settings(database_url=database_url, temporal_address=address, task_queue=queue, accounts_dir=accounts)
    try:
        async with EgisClient.from_settings(settings) as client:
            for bot, exchange, account in (
                ("fb", Exchange.BINANCEUSDM, "canary-file"),
                ("eb", Exchange.BYBIT, "canary-env"),
            ):
                await client.create_bot(
                    BotSpec(name=bot, exchange=exchange, account=account, budget_usd=Decimal(1000)), actor="test"
                )
            # a normal lifecycle, a ghost, and a close refused with an authentication error
            for n, bot in enumerate(("fb", "eb", "fb", "eb")):
                view = await client.open_position(
                    OpenPositionInput(bot=bot, symbol="BTCUSDT", side="long", usd=Decimal(120), ref=f"s{n}")
                )
                key = CANARY_KEY if bot == "fb" else ENV_KEY
                if n == 1:
                    await sim_control.close_position(key, "BTCUSDT")
                if n == 2:
                    await sim_control.add_fault(
                        "POST /fapi/v1/order",
                        "error",
                        http_status=401,
                        code=-2015,
                        msg="Invalid API-key, IP, or permissions for action.",
                        api_key=key,
                    )
                    await client.close_position(view.workflow_id, CloseRequest(reason="manual"))
                await client.close_position(view.workflow_id, CloseRequest(reason="manual"))
            # the private streams' error paths too: a dropped socket and an expired listen key (its URL
            # carries the key, and ccxt's errors quote the URL)
            await _streams_up(sim_control)
            await sim_control.drop_streams()
            expired = await sim_control.expire_listen_key(CANARY_KEY)
            await asyncio.sleep(3)  # reconnects, with new keys
            histories = [
                (await temporal_env.client.get_workflow_handle(w.id, run_id=w.run_id).fetch_history()).to_json()
                async for w in temporal_env.client.list_workflows(f'TaskQueue = "{queue}"')
            ]
    finally:
        worker.terminate()
        await asyncio.to_thread(worker.wait)

    requests = await sim_control.requests()
    assert {CANARY_KEY, ENV_KEY} <= {r["api_key"] for r in requests}, "control: the keys were really used"
    assert len(histories) >= 4
    dump = await asyncio.to_thread(pg_dump, pg_server.port, database_url.rsplit("/", 1)[1])
    assert "positions" in dump and "audit_events" in dump
    worker_log = log.read_text()
    assert "worker ready" in worker_log
    listen_keys = {expired, *(k["listen_key"] for k in (await sim_control.streams())["listen_keys"])}
    assert expired is not None and len(listen_keys) >= 1, "control: the Binance stream really ran"
    for canary in (*CANARIES, *listen_keys):
        assert not any(canary in h for h in histories), f"{canary} in a Temporal history"
        assert canary not in worker_log, f"{canary} in the worker log"
        assert canary not in dump, f"{canary} in the database"


async def _streams_up(sim_control: SimulatorControl, timeout: float = 30.0) -> None:
    """Both accounts' private streams are connected (the worker starts them at discovery)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        keys = {c["api_key"] for c in (await sim_control.streams())["connections"]}
        if {CANARY_KEY, ENV_KEY} <= keys:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the private streams never connected")
