"""The chaos runner: drive position lifecycles while killing, cutting and misleading the system,
then let it quiesce and check the invariants (chaos/invariants.py).

Everything is real: the embedded stack (PostgreSQL, Temporal dev server, a worker subprocess),
the exchange simulators spoken to by the real ccxt client, and the paper exchange. Lifecycle
drivers play the bots and the operator (they retry what an operator would retry); the monkey
injects, at random points: worker kill -9 and restart, PostgreSQL restart, Temporal restart,
and exchange faults (5xx, timeouts, accept-then-timeout, 429 bursts, misleading 170131 / -2022,
bans: 429 then 418 / Bybit 403), and venue-wide behaviours for a while (a skewed clock, Bybit's
order history lagging with its realtime cache empty, Binance answering MARKET orders NEW / 0),
and private-stream faults (socket dropped, silent stall, events skipped or delayed, listen key
expired; the worker that holds a stream is killed like any other).
Lifecycle kinds: normal, closed behind the bot's back (ghost, manual or found by the sync),
aged, partly closed by hand, a reversal (close a long, open a short at once: seed 000's phantom
rule matches it; phantom cleanup runs with --confirm all along), and liquidated (or ADL).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError
from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError

from chaos import invariants
from egis import schedules
from egis.client import EgisClient
from egis.config import Settings
from egis.errors import EgisError, InvalidTransition, PositionAlreadyOpen, StackError
from egis.exchanges.accounts import AccountConfig, PriceSource, write_account
from egis.models import AgedPolicy, BotSpec, CloseRequest, Exchange, OpenPositionInput, Side
from egis.rules.sizing import floor_to_step
from egis.simulator.control import SimulatorControl
from egis.simulator.server import start_simulator
from egis.stack.processes import free_port
from egis.stack.stack import Stack

T = TypeVar("T")
D = Decimal
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT", "CLOUDUSDT"]
USD = {"BTCUSDT": "150", "ETHUSDT": "150", "SOLUSDT": "300", "DOGEUSDT": "50", "CLOUDUSDT": "20"}
STEPS = {"BTCUSDT": D("0.001"), "ETHUSDT": D("0.001"), "SOLUSDT": D("0.1"), "DOGEUSDT": D(1), "CLOUDUSDT": D(1)}
START_PRICES = {
    "BTCUSDT": D(60000),
    "ETHUSDT": D(3000),
    "SOLUSDT": D(150),
    "DOGEUSDT": D("0.2"),
    "CLOUDUSDT": D("0.13012"),
}
KINDS = ["normal", "ghost_manual", "ghost_passive", "aged", "partial", "reversal", "liquidated"]
LEGACY_EVERY = 25
"""One legacy phantom (seed 000's rows: no workflow, no orders) is planted per this many lifecycles."""
JANITOR_SECONDS = 4.0
"""Phantom cleanup runs with --confirm this often while the load runs (issue 11)."""
AGED = AgedPolicy(max_age_s=2, grace_s=120, loss_step_pct=D("0.5"), max_loss_pct=D(5), expire_s=600)
BAN_SECONDS = 10
"""The simulator's first Binance ban in the chaos run (the venue's: 120 s)."""
VENUE_DEFAULTS = {
    "clock_offset_ms": 0,
    "bybit_history_delay_ms": 500,
    "bybit_realtime_closed_cap": 500,
    "binance_market_new_answer": False,
}
"""The simulator's faithful defaults, restored after each venue-wide fault."""
STALL_SECONDS = 600.0
"""A run in which no lifecycle ends and no end-of-run step passes for this long has hung: the
watchdog logs where every task waits and fails the run (it had sat silent for good)."""
TRANSIENT = (
    RPCError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    StackError,
    OSError,
    ConnectionError,
    DBAPIError,
    InterfaceError,
    TimeoutError,
)

logger = logging.getLogger("chaos")


@dataclass(frozen=True)
class ChaosConfig:
    lifecycles: int
    worker_kills: int
    postgres_restarts: int
    temporal_restarts: int
    exchange_faults: int
    accounts_per_exchange: int = 3
    concurrency: int = 12
    seed: int = 7
    workers: int = 2  # worker processes (the stack's pool); a worker kill hits one of them at random


QUICK = ChaosConfig(lifecycles=40, worker_kills=2, postgres_restarts=1, temporal_restarts=1, exchange_faults=12)
LONG = ChaosConfig(
    lifecycles=1000,
    worker_kills=12,
    postgres_restarts=4,
    temporal_restarts=3,
    exchange_faults=300,
    concurrency=20,
    workers=3,
)


@dataclass
class Tally:
    kinds: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    operator_retries: int = 0
    cleanup: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)  # why opens were refused
    killed_workers: Counter[str] = field(default_factory=Counter)  # which worker process each kill hit


async def patient(call: Callable[[], Awaitable[T]], *, seconds: float = 120.0) -> T:
    """Retry through outages (a restarting Temporal or PostgreSQL) the way a bot would: give up
    once the calls have kept failing for `seconds`. The clock starts at the first failure, not
    at the first call: an open that waited 100 s for its fill and then met a restart is
    retried like any other (a deadline from the first call had given it 20 s)."""
    deadline: float | None = None
    while True:
        try:
            return await call()
        except TRANSIENT:
            now = time.monotonic()
            deadline = now + seconds if deadline is None else deadline
            if now > deadline:
                raise
            await asyncio.sleep(0.5)


@dataclass
class Slot:
    exchange: Exchange
    account: str
    api_key: str | None
    symbol: str


class Chaos:
    def __init__(self, config: ChaosConfig, client: EgisClient, sim: SimulatorControl, stack: Stack) -> None:
        self.config = config
        self.client = client
        self.sim = sim
        self.stack = stack
        self.rng = random.Random(config.seed)
        self.victims = random.Random(config.seed + 1)  # which worker a kill hits (the plan stays the same)
        self.tally = Tally()
        self.slots: asyncio.Queue[Slot] = asyncio.Queue()
        self.api_keys: dict[str, str] = {}
        self.bots: dict[tuple[str, bool], str] = {}  # (account, aged) -> bot
        self.run_id = time.strftime("%H%M%S")
        self.prices = dict(START_PRICES)
        self.violations: list[invariants.Violation] = []  # found during the run (after each cleanup)
        self.finished = 0  # lifecycles ended
        self.phase = "load"  # the run's step, logged by the watchdog
        self.progressed = time.monotonic()
        self.reverts: list[asyncio.Task[None]] = []
        self.refusals = self.tally.refusals

    # ------------------------------------------------------------ setup
    async def setup(self, accounts_dir: Path) -> None:
        # Simulated bans last seconds (Binance's real first ban lasts 2 minutes, doubling per repeat up
        # to 3 days; Bybit's 10+ minutes, see EGIS_BYBIT_IP_BAN_SECONDS below): the run measures that
        # Egis waits a ban out and keeps its invariants, not how long a venue can keep it out.
        await self.sim.settings(binance_ban_seconds=BAN_SECONDS)
        for exchange in (Exchange.BINANCEUSDM, Exchange.BYBIT, Exchange.PAPER):
            for n in range(self.config.accounts_per_exchange):
                account = f"chaos-{exchange.value[:5]}-{n}"
                key = f"chaos-{exchange.value}-{n}-key" if exchange is not Exchange.PAPER else None
                config = (
                    AccountConfig(
                        exchange=exchange, price_source=PriceSource(base_url=self.sim.base_url), timeout_ms=1500
                    )
                    if exchange is Exchange.PAPER
                    else AccountConfig(
                        exchange=exchange,
                        api_key=key,
                        secret="chaos-secret",
                        base_url=self.sim.base_url,
                        timeout_ms=1500,
                    )
                )
                write_account(accounts_dir, account, config)
                if key:
                    self.api_keys[account] = key
                    await self.sim.add_api_keys({key: "chaos-secret"})
                if exchange is Exchange.BINANCEUSDM:  # owns the legacy rows seed 000 left behind
                    spec = BotSpec(name=f"{account}-legacy", exchange=exchange, account=account, budget_usd=D(100000))
                    await self.client.create_bot(spec, actor="chaos")
                for aged in (False, True):
                    bot = f"{account}-{'aged' if aged else 'plain'}"
                    await self.client.create_bot(
                        BotSpec(
                            name=bot,
                            exchange=exchange,
                            account=account,
                            budget_usd=D(100000),
                            aged=AGED if aged else None,
                        ),
                        actor="chaos",
                    )
                    self.bots[(account, aged)] = bot
                for symbol in SYMBOLS:
                    self.slots.put_nowait(Slot(exchange, account, key, symbol))
        await schedules.install(
            self.client.require_temporal(),
            self.client.settings.task_queue,
            await self.client.live_accounts(),
            schedules.Options(sync_every=timedelta(seconds=3)),
        )

    # ------------------------------------------------------------ lifecycles
    async def lifecycle(self, n: int) -> None:
        kind = KINDS[n % len(KINDS)] if n < len(KINDS) else self.rng.choice(KINDS)
        slot = await self.slots.get()
        if slot.exchange is Exchange.PAPER and kind in ("ghost_manual", "ghost_passive", "partial", "liquidated"):
            kind = "normal"  # the paper exchange has no "behind our back"
        if kind == "reversal" and slot.exchange is not Exchange.BINANCEUSDM:
            kind = "normal"  # seed 000's phantom rule looks at Binance only
        self.tally.kinds[kind] += 1
        try:
            await self._lifecycle(kind, slot, n)
        finally:
            self.slots.put_nowait(slot)
            self.finished += 1
            self.progressed = time.monotonic()

    def step(self, phase: str) -> None:
        logger.warning("%s", phase)
        self.phase = phase
        self.progressed = time.monotonic()

    async def watchdog(self, total: int) -> None:
        """Log progress every minute; after STALL_SECONDS without any, log where each task waits
        and end (the run then fails instead of sitting silent)."""
        while True:
            await asyncio.sleep(60)
            idle = time.monotonic() - self.progressed
            logger.warning(
                "%d/%d lifecycles ended, step %r, %.0f s since the last progress",
                self.finished,
                total,
                self.phase,
                idle,
            )
            if idle > STALL_SECONDS:
                stacks = io.StringIO()
                for task in asyncio.all_tasks():
                    task.print_stack(limit=12, file=stacks)
                logger.error("hung at step %r; where each task waits:\n%s", self.phase, stacks.getvalue())
                return

    async def _lifecycle(self, kind: str, slot: Slot, n: int) -> None:
        bot = self.bots[(slot.account, kind == "aged")]
        ref = f"c{self.run_id}-{n}"
        request = OpenPositionInput(bot=bot, symbol=slot.symbol, side="long", usd=D(USD[slot.symbol]), ref=ref)
        view = await self._open(request)
        if view is None or view.status != "open":
            self.tally.outcomes["open_refused"] += 1
            return
        if kind == "reversal":  # the bot reverses: close the long, then at once a short of the same size
            await self._close_like_an_operator(view.workflow_id, view.position_id)
            short = request.model_copy(update={"side": Side.SHORT, "ref": f"{ref}-s"})
            view = await self._open(short)
            if view is None or view.status != "open":
                self.tally.outcomes["open_refused"] += 1
                return
            await asyncio.sleep(self.rng.uniform(2, 6))  # long enough for the janitor's cleanup to see it
        await asyncio.sleep(self.rng.uniform(0, 1.5))
        if kind == "liquidated" and slot.api_key:  # the liquidation engine (or ADL) takes it
            action = self.sim.liquidate if self.rng.random() < 0.7 else self.sim.auto_deleverage
            await patient(lambda: action(slot.api_key, slot.symbol))  # type: ignore[arg-type]
        if kind in ("ghost_manual", "ghost_passive") and slot.api_key:
            await patient(lambda: self.sim.close_position(slot.api_key, slot.symbol))  # type: ignore[arg-type]
        if kind == "partial" and slot.api_key:  # someone halves it by hand on the exchange
            half = floor_to_step(view.quantity / 2, STEPS[slot.symbol])
            if half > 0:
                await patient(lambda: self.sim.reduce_position(slot.api_key, slot.symbol, half))  # type: ignore[arg-type]
        if kind == "aged":
            await patient(lambda: self._nudge_price(slot.symbol))
        if kind in ("ghost_passive", "aged") and await self._wait_final(view.position_id, 30):
            self.tally.outcomes[f"{kind}_closed_by_egis"] += 1
            return
        await self._close_like_an_operator(view.workflow_id, view.position_id)

    async def _nudge_price(self, symbol: str) -> None:
        """Prices only drift up, so an aged position reaches its grace (breakeven) target."""
        self.prices[symbol] = (self.prices[symbol] * D("1.002")).quantize(D("0.00001"))
        await self.sim.set_price(symbol, self.prices[symbol])

    async def _open(self, request: OpenPositionInput) -> Any:
        async def attempt() -> Any:
            try:
                return await self.client.open_position(request, wait=90)
            except PositionAlreadyOpen:  # our earlier attempt started it before an outage hid the answer
                return await self.client.position_state(f"pos-{request.bot}-{request.ref}")

        try:
            view = await patient(attempt)
        except EgisError as exc:
            self.refusals[exc.code] += 1
            return None
        workflow_id = view.workflow_id
        while view.status == "opening":
            await asyncio.sleep(0.5)
            view = await patient(lambda: self.client.position_state(workflow_id))
        if view.status != "open":
            self.refusals[(view.last_error or view.status).split(":")[0]] += 1
        return view

    async def _close_like_an_operator(self, workflow_id: str, position_id: int) -> None:
        for _ in range(10):
            if await self._wait_final(position_id, 0):
                break
            try:
                result = await patient(lambda: self.client.close_position(workflow_id, CloseRequest(reason="chaos")))
                if result is not None and result.status == "closed":
                    break
                self.tally.operator_retries += 1  # refused for good (PERMANENT): the operator tries again
            except InvalidTransition:
                pass  # already closing (our own earlier request, answered during an outage): wait for it
            if await self._wait_final(position_id, 20):
                break
        self.tally.outcomes["closed" if await self._wait_final(position_id, 60) else "stuck"] += 1

    async def _wait_final(self, position_id: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            row = await patient(lambda: self.client.store.get_position(position_id))
            if row["status"] in ("closed", "failed"):
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.5)

    # ------------------------------------------------------------ phantom cleanup, with --confirm
    async def plant_legacy_phantom(self, n: int) -> None:
        """Seed 000's leftovers as a legacy import has them (no workflow, no orders): a closed long
        and the phantom short created with it. The cleanup must close it, unless the exchange
        holds a short there that no live position accounts for."""
        account = self.rng.choice(sorted(a for a in self.api_keys if "binan" in a))
        bot = f"{account}-legacy"
        symbol = self.rng.choice(SYMBOLS)
        at = "now() - interval '1 hour'"
        values = (
            f"'{bot}', 'binanceusdm', '{account}', '{symbol}', {{side}}, {{status}}, {{quantity}}, 60000, 60000, "
            f"150, {at}, {at}, {{closed}}"
        )
        columns = (
            "uid, bot, exchange, account, symbol, side, status, quantity, entry_price, exit_price, size_usd, "
            "created_at, opened_at, closed_at, exit_reason"
        )
        async with self.client.engine.begin() as conn:
            for uid, side, status, quantity, closed in (
                (f"legacy-l-{self.run_id}-{n}", "'long'", "'closed'", "0.0025", f"{at}, 'closed'"),
                (f"legacy-s-{self.run_id}-{n}", "'short'", "'open'", "0", "NULL, NULL"),
            ):
                row = values.format(side=side, status=status, quantity=quantity, closed=closed)
                await conn.execute(text(f"INSERT INTO positions ({columns}) VALUES ('{uid}', {row})"))
        self.tally.cleanup["legacy phantoms planted"] += 1

    async def janitor(self, stop: asyncio.Event) -> None:
        """Phantom cleanup with --confirm, over and over while the load runs; after every run,
        check that no repair closed a position the exchange still holds."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), JANITOR_SECONDS)
            last = stop.is_set()
            try:
                report = await patient(
                    lambda: self.client.cleanup_phantom_shorts(confirm=True, debug=False, actor="chaos")
                )
            except EgisError:
                if last:
                    return
                continue
            self.tally.cleanup["cleanup runs"] += 1
            for row in report.rows:
                self.tally.cleanup[f"{row['verdict']} ({row['action']})"] += 1
            self.violations += await patient(functools.partial(self._check_repairs, report.run_id))
            if last:
                return

    async def _check_repairs(self, run_id: int) -> list[invariants.Violation]:
        return await invariants.repairs_left_the_exchange_alone(self.client.engine, self.sim, self.api_keys, run_id)

    # ------------------------------------------------------------ the monkey
    async def monkey(self, duration: float) -> None:
        events = (
            ["worker_kill"] * self.config.worker_kills
            + ["postgres_restart"] * self.config.postgres_restarts
            + ["temporal_restart"] * self.config.temporal_restarts
            + ["exchange_fault"] * self.config.exchange_faults
        )
        self.rng.shuffle(events)
        times = sorted(self.rng.uniform(2, max(duration, 3)) for _ in events)
        started = time.monotonic()
        for at, event in zip(times, events, strict=True):
            await asyncio.sleep(max(0, started + at - time.monotonic()))
            began = time.monotonic()
            logger.warning("chaos fault: %s", event)
            await getattr(self, event)()
            logger.warning("chaos fault: %s done in %.1f s", event, time.monotonic() - began)
            self.progressed = time.monotonic()  # the monkey's faults go on after a fast load: progress too

    async def worker_kill(self) -> None:
        victim = self.victims.randrange(self.stack.worker_count)
        await self.stack.stop_worker(victim, kill=True)
        self.tally.faults["worker kill -9"] += 1
        self.tally.killed_workers[f"worker {victim}"] += 1
        await asyncio.sleep(self.rng.uniform(0.2, 2))
        await self.stack.start_worker(victim)

    async def postgres_restart(self) -> None:
        assert self.stack.postgres is not None
        await self.stack.postgres.stop()
        self.tally.faults["postgresql restart"] += 1
        await asyncio.sleep(self.rng.uniform(0.5, 2))
        await self.stack.postgres.start()

    async def temporal_restart(self) -> None:
        assert self.stack.temporal is not None
        await self.stack.temporal.stop()
        self.tally.faults["temporal restart"] += 1
        await asyncio.sleep(self.rng.uniform(0.5, 2))
        await self.stack.temporal.start()

    async def exchange_fault(self) -> None:
        account = self.rng.choice(sorted(self.api_keys))
        key = self.api_keys[account]
        binance = "binan" in account
        order = "POST /fapi/v1/order" if binance else "POST /v5/order/create"
        read = "GET /fapi/v3/positionRisk" if binance else "GET /v5/position/list"
        misleading = (
            {"code": -2022, "msg": "ReduceOnly Order is rejected."}
            if binance
            else {"code": 170131, "msg": "Insufficient balance."}
        )
        choices = {
            "exchange 5xx": (order, {"kind": "http", "http_status": 503, "body": "Service Unavailable."}),
            "exchange timeout": (order, {"kind": "timeout", "seconds": 3}),
            "accept-then-timeout": (order, {"kind": "accept_then_timeout", "seconds": 3}),
            # Bybit's 10006 resets within the second, so several in a row is a burst; Binance's 429 says
            # to wait until its minute window ends, after which the weight starts again from 0: one 429
            # (a second one right after the wait would be a venue harsher than the real one)
            "429 burst": (order, {"kind": "rate_limit", "count": 1 if binance else 4}),
            "misleading 170131/-2022": (order, {"kind": "error", **misleading}),
            "position read 5xx": (read, {"kind": "http", "http_status": 502, "body": "Bad Gateway"}),
        }
        choices["ban (429 then 418 / 403)"] = (read, {"kind": "ban", "seconds": self.rng.uniform(2, 8)})
        venue = {
            "clock skew": {"clock_offset_ms": self.rng.choice([-1, 1]) * self.rng.randint(2_000, 40_000)},
            "delayed order history (bybit)": {
                "bybit_history_delay_ms": self.rng.randint(1_000, 8_000),
                "bybit_realtime_closed_cap": self.rng.choice([0, 5, 500]),
            },
            "NEW/0 market answers (binance)": {"binance_market_new_answer": True},
        }
        venue_name = "binanceusdm" if binance else "bybit"
        streams: dict[str, Callable[[], Awaitable[Any]]] = {
            "stream drop": lambda: self.sim.drop_streams(venue_name, key),
            "stream silent stall": lambda: self.sim.silence_streams(venue_name, key, seconds=self.rng.uniform(5, 40)),
            "stream events skipped": lambda: self.sim.skip_stream_events(venue_name, key, self.rng.randint(1, 4)),
            "stream events delayed": lambda: self.sim.delay_stream_events(venue_name, key, 3, self.rng.uniform(1, 5)),
        }
        if binance:
            streams["listen key expired"] = lambda: self.sim.expire_listen_key(key)
        name = self.rng.choice(sorted([*choices, *venue, *streams]))
        if name in streams:
            await patient(streams[name])
            self.tally.faults[name] += 1
            return
        if name in venue:  # a venue-wide behaviour for a while, then back to the default
            await patient(lambda: self.sim.settings(**venue[name]))
            self.tally.faults[name] += 1
            self.reverts.append(asyncio.create_task(self._revert_later(self.rng.uniform(3, 15))))
            return
        route, fault = choices[name]
        await patient(lambda: self.sim.add_fault(route, api_key=key, **{"count": 1} | fault))
        self.tally.faults[name] += 1
        if fault["kind"] == "ban":
            # each injected ban is an incident of its own: once it has run its course the venue forgets
            # it, or bans would double from one fault to the next (10 s, 20 s, ... 3 days) over a long run
            self.reverts.append(asyncio.create_task(self._lift_bans_later(fault["seconds"] + 2 * BAN_SECONDS)))

    async def _lift_bans_later(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await patient(self.sim.lift_bans)

    async def _revert_later(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await patient(lambda: self.sim.settings(**VENUE_DEFAULTS))


@dataclass
class ChaosResult:
    config: ChaosConfig
    tally: Tally
    violations: list[invariants.Violation]
    quiesce_seconds: float
    wall_seconds: float

    @property
    def ok(self) -> bool:
        return not self.violations and not self.tally.outcomes.get("stuck")


async def run(config: ChaosConfig) -> ChaosResult:
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="egis-chaos-"))
    settings = Settings(
        data_dir=root / ".egis",
        temporal_port=free_port(),
        temporal_ui_port=free_port(),
        postgres_port=free_port(),
        metrics_port=0,
        sdk_metrics_port=0,
        task_queue="chaos",
        accounts_dir=root / "accounts",
    )
    sim_server = await start_simulator()
    stack = Stack(
        settings,
        ui=False,
        workers=config.workers,
        worker_log=root / "worker.log",
        worker_env={
            "EGIS_WATCH_TICK_SECONDS": "1",
            "EGIS_SYNC_GRACE_SECONDS": "3",
            "EGIS_METRICS_PORT": "0",
            "EGIS_SDK_METRICS_PORT": "0",
            "EGIS_BYBIT_IP_BAN_SECONDS": "10",  # the simulated 403 bans last seconds, Bybit's real ones 10+ min
        },
    )
    failed = False
    await stack.start()
    effective = settings.model_copy(
        update={"database_url": stack.database_url, "temporal_address": stack.temporal_address}
    )
    try:
        async with EgisClient.from_settings(effective) as client, SimulatorControl(sim_server.base_url) as sim:
            chaos = Chaos(config, client, sim, stack)
            await chaos.setup(settings.resolved_accounts_dir)
            load = asyncio.Semaphore(config.concurrency)

            async def one(n: int) -> None:
                async with load:
                    if n % LEGACY_EVERY == LEGACY_EVERY - 1:
                        await patient(lambda: chaos.plant_legacy_phantom(n))
                    await chaos.lifecycle(n)

            async def body() -> ChaosResult:
                expected = config.lifecycles * 1.2
                monkey = asyncio.create_task(chaos.monkey(expected))
                janitor_stop = asyncio.Event()
                janitor = asyncio.create_task(chaos.janitor(janitor_stop))
                await asyncio.gather(*(one(n) for n in range(config.lifecycles)))
                chaos.step("every lifecycle ended; waiting for the monkey's last fault")
                await monkey
                chaos.step("reverting the venue-wide faults")
                await asyncio.gather(*chaos.reverts)
                await sim.clear_faults()
                await sim.lift_bans()
                chaos.step("starting any worker not running")
                await stack.start_worker()  # any worker of the pool that is not running
                load_done = time.monotonic()
                chaos.step("deleting the schedules")
                for row in await schedules.list_schedules(client.require_temporal(), settings.task_queue):
                    await client.require_temporal().get_schedule_handle(row["id"]).delete()
                chaos.step("the phantom cleanup's last run")
                janitor_stop.set()
                await janitor  # its last run, after every lifecycle ended, closes the legacy phantoms left
                chaos.step("quiescing")
                violations = await quiesce(client, sim, chaos.api_keys, settings.task_queue)
                violations = chaos.violations + violations
                quiesced = time.monotonic() - load_done
                return ChaosResult(config, chaos.tally, violations, quiesced, time.monotonic() - started)

            work = asyncio.create_task(body())
            watchdog = asyncio.create_task(chaos.watchdog(config.lifecycles))
            await asyncio.wait({work, watchdog}, return_when=asyncio.FIRST_COMPLETED)
            watchdog.cancel()
            if not work.done():
                work.cancel()
                raise RuntimeError(f"the chaos run hung at step {chaos.phase!r} (see the log for where)")
            return work.result()
    except BaseException:
        failed = True
        logger.exception("chaos: the run failed")
        raise
    finally:
        await stack.stop()
        await sim_server.stop()
        if failed:
            # A run that did not finish keeps its data (the Temporal, PostgreSQL and worker logs) to read.
            logger.error("chaos: the run failed; its data and logs are kept in %s", root)
        else:
            shutil.rmtree(root, ignore_errors=True)


async def quiesce(
    client: EgisClient, sim: SimulatorControl, api_keys: dict[str, str], queue: str, timeout: float = 120.0
) -> list[invariants.Violation]:
    """Wait until the invariants hold (or the timeout passes), then report what still doesn't."""
    deadline = time.monotonic() + timeout
    while True:
        violations = await patient(
            lambda: invariants.check(client.engine, sim, api_keys, client.require_temporal(), queue)
        )
        if not violations or time.monotonic() > deadline:
            return violations
        await asyncio.sleep(1)
