"""`egis demo`: the main job a newcomer runs.

Brings the embedded stack up (or uses the one `egis dev up` is running for this data dir),
starts the local exchange simulators, and replays the incidents Egis was built for, through
real workflows, the real ccxt client and the paper exchange. Prints a table of what happened
and the web UI URL, then shuts down (`--keep` leaves everything up until Ctrl-C).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import func

from egis.client import EgisClient
from egis.config import Settings
from egis.db.schema import positions
from egis.errors import DuplicateBot, EgisError
from egis.exchanges.accounts import AccountConfig, PriceSource, write_account
from egis.models import AgedPolicy, BotSpec, CloseRequest, Exchange, OpenPositionInput
from egis.output import table
from egis.simulator.control import SimulatorControl
from egis.simulator.server import SimulatorServer, start_simulator
from egis.stack.stack import Stack

D = Decimal
ACTOR = "demo"
KEYS = {
    Exchange.BINANCEUSDM: ("demo-binance-key", "demo-binance-secret"),
    Exchange.BYBIT: ("demo-bybit-key", "demo-bybit-secret"),
}
ACCOUNTS = {Exchange.BINANCEUSDM: "demo-binance", Exchange.BYBIT: "demo-bybit", Exchange.PAPER: "demo-paper"}
DEMO_AGED = AgedPolicy(max_age_s=3, grace_s=600, loss_step_pct=D("0.5"), max_loss_pct=D(5), expire_s=3600)


@dataclass
class Step:
    scenario: str
    expected: str
    observed: str
    ok: bool


@dataclass
class Demo:
    client: EgisClient
    sim: SimulatorControl
    run_id: str
    steps: list[Step] = field(default_factory=list)

    def report(self, scenario: str, expected: str, observed: str, ok: bool) -> None:
        self.steps.append(Step(scenario, expected, observed, ok))
        print(f"  [{'ok' if ok else 'FAIL'}] {scenario}: {observed}", flush=True)

    async def bot(self, name: str, exchange: Exchange, aged: AgedPolicy | None = None) -> str:
        with contextlib.suppress(DuplicateBot):
            await self.client.create_bot(
                BotSpec(name=name, exchange=exchange, account=ACCOUNTS[exchange], budget_usd=D(1000), aged=aged),
                actor=ACTOR,
            )
        live = [p for p in await self.client.positions(bot=name) if p["status"] in ("opening", "open", "closing")]
        if live:
            ids = ", ".join(str(p["id"]) for p in live)
            raise EgisError(
                f"bot {name} still has live positions from an earlier demo run ({ids}); "
                "close them (egis close <id>) or start from a fresh data dir"
            )
        return name

    async def open(self, bot: str, symbol: str, usd: str, ref: str) -> Any:
        request = OpenPositionInput(bot=bot, symbol=symbol, side="long", usd=D(usd), ref=f"{ref}-{self.run_id}")
        view = await self.client.open_position(request, wait=60)
        if view.status != "open":
            raise EgisError(f"demo position {view.workflow_id} did not open: {view.status} {view.last_error or ''}")
        return view

    async def close_orders(self, exchange: Exchange) -> list[dict[str, Any]]:
        return [o for o in await self.sim.orders(KEYS[exchange][0]) if o["reduce_only"]]


def write_demo_accounts(settings: Settings, base_url: str) -> None:
    accounts_dir = settings.resolved_accounts_dir
    for exchange in (Exchange.BINANCEUSDM, Exchange.BYBIT):
        key, secret = KEYS[exchange]
        write_account(
            accounts_dir,
            ACCOUNTS[exchange],
            AccountConfig(exchange=exchange, api_key=key, secret=secret, base_url=base_url, timeout_ms=3000),
        )
    write_account(
        accounts_dir,
        ACCOUNTS[Exchange.PAPER],
        AccountConfig(exchange=Exchange.PAPER, price_source=PriceSource(base_url=base_url), timeout_ms=3000),
    )


# ---------------------------------------------------------------- scenarios
async def seed_000_no_phantom_short(demo: Demo) -> None:
    bot = await demo.bot("demo-binance", Exchange.BINANCEUSDM)
    view = await demo.open(bot, "BTCUSDT", "300", "s000")
    await demo.client.close_position(view.workflow_id, CloseRequest(reason="manual"))
    rows = [p for p in await demo.client.positions(bot=bot) if p["workflow_id"] == view.workflow_id]
    shorts = [p for p in await demo.client.positions(bot=bot) if p["side"] == "short" and p["status"] == "open"]
    on_exchange = await demo.sim.positions(KEYS[Exchange.BINANCEUSDM][0])
    ok = rows[0]["status"] == "closed" and not shorts and not on_exchange
    demo.report(
        "seed 000: close a Binance long",
        "the long closes; no SHORT appears in Egis or on the exchange",
        f"long {rows[0]['status']} @ {rows[0]['exit_price']}; open shorts in DB: {len(shorts)}, "
        f"positions on exchange: {len(on_exchange)}",
        ok,
    )


async def seed_003_ghost_at_aged_close(demo: Demo) -> None:
    bot = await demo.bot("demo-bybit-aged", Exchange.BYBIT, aged=DEMO_AGED)
    view = await demo.open(bot, "CLOUDUSDT", "6", "s003")
    await demo.sim.close_position(KEYS[Exchange.BYBIT][0], "CLOUDUSDT", price="0.1324")  # stop-loss hit
    await demo.sim.set_price("CLOUDUSDT", "0.1324")  # profitable: the aged monitor wants to close
    row = await wait_for(lambda: _final_row(demo, view.position_id), 90)
    sent = await demo.close_orders(Exchange.BYBIT)
    ok = row is not None and row["exit_reason"] == "closed_on_exchange" and not sent
    demo.report(
        "seed 003: Bybit position gone before its aged close",
        "ghost detected at the first close; 0 close orders (not 26 x 170131)",
        f"{row['exit_reason'] if row else 'still open'} @ {row['exit_price'] if row else '-'}, "
        f"pnl {row['realized_pnl'] if row else '-'}; close orders sent: {len(sent)}",
        ok,
    )


async def quantity_mismatch(demo: Demo) -> None:
    bot = await demo.bot("demo-bybit", Exchange.BYBIT)
    view = await demo.open(bot, "DOGEUSDT", "100", "qty")  # 500 DOGE
    await demo.sim.reduce_position(KEYS[Exchange.BYBIT][0], "DOGEUSDT", "200")  # someone traded by hand
    result = await demo.client.close_position(view.workflow_id, CloseRequest(reason="manual"))
    closes = [o for o in await demo.close_orders(Exchange.BYBIT) if o["symbol"] == "DOGEUSDT"]
    ok = result is not None and result.status == "closed" and [o["quantity"] for o in closes] == [D(300)]
    demo.report(
        "seed 003: quantity mismatch",
        "the close uses the exchange's 300, not our 500",
        f"{result.status if result else '?'}; close order quantities: {[str(o['quantity']) for o in closes]}",
        ok,
    )


async def manual_close_by_signal(demo: Demo) -> None:
    bot = await demo.bot("demo-paper", Exchange.PAPER)
    before = await demo.client.budget(bot)
    view = await demo.open(bot, "ETHUSDT", "250", "manual")
    during = await demo.client.budget(bot)
    await demo.client.close_position(view.workflow_id, CloseRequest(reason="operator"), wait=False)
    row = await wait_for(lambda: _final_row(demo, view.position_id), 30)
    after = await demo.client.budget(bot)
    ok = row is not None and row["exit_reason"] == "operator" and after.available_usd == before.available_usd
    demo.report(
        "manual close by signal (paper)",
        "closes; the budget is reserved while open and released after",
        f"{row['status'] if row else 'open'}; available ${before.available_usd} -> ${during.available_usd} "
        f"-> ${after.available_usd}",
        ok and during.available_usd == before.available_usd - 250,
    )


async def seed_000_phantom_cleanup(demo: Demo) -> None:
    """Plant the row seed 000's bug used to write (a SHORT mirroring the long's close), then heal."""
    bot = "demo-binance"
    long = next(p for p in await demo.client.positions(bot=bot) if p["side"] == "long" and p["status"] == "closed")
    async with demo.client.engine.begin() as conn:
        await conn.execute(
            positions.insert().values(
                uid=f"legacy{demo.run_id}",
                bot=bot,
                exchange="binanceusdm",
                account=long["account"],
                symbol=long["symbol"],
                side="short",
                status="open",
                quantity=0,
                entry_price=long["exit_price"],
                size_usd=long["size_usd"],
                created_at=long["closed_at"],
                opened_at=long["closed_at"],
            )
        )
    dry = await demo.client.cleanup_phantom_shorts(confirm=False, debug=False, actor=ACTOR)
    fixed = await demo.client.cleanup_phantom_shorts(confirm=True, debug=False, actor=ACTOR)
    again = await demo.client.cleanup_phantom_shorts(confirm=False, debug=False, actor=ACTOR)
    ok = dry.found["phantom_short"] >= 1 and fixed.repaired == dry.found["phantom_short"] and not again.rows
    demo.report(
        "seed 000: legacy phantom SHORT cleanup",
        "dry run finds it, --confirm closes it (row kept, audited), a rerun finds nothing",
        f"dry run found {dry.found['phantom_short']}, --confirm closed {fixed.repaired}, rerun found {len(again.rows)}",
        ok,
    )


async def seed_000_paper_drift(demo: Demo) -> None:
    """Plant paper drift (an internal position the paper exchange never held), then reconcile."""
    bot = "demo-paper"
    async with demo.client.engine.begin() as conn:
        await conn.execute(
            positions.insert().values(
                uid=f"drift{demo.run_id}",
                bot=bot,
                exchange="paper",
                account=ACCOUNTS[Exchange.PAPER],
                symbol="SOLUSDT",
                side="long",
                status="open",
                quantity=D(2),
                entry_price=D(150),
                size_usd=D("1000.01"),
                opened_at=func.now(),
            )
        )
    drifted = await demo.client.budget(bot)
    dry = await demo.client.reconcile_paper(fix=False, debug=False, actor=ACTOR)
    fixed = await demo.client.reconcile_paper(fix=True, debug=False, actor=ACTOR)
    again = await demo.client.reconcile_paper(fix=False, debug=False, actor=ACTOR)
    healed = await demo.client.budget(bot)
    ok = drifted.available_usd < 0 and sum(dry.found.values()) >= 1 and not again.found and healed.available_usd >= 0
    demo.report(
        "seed 000: paper drift, negative budget",
        "reconcile finds the drift, --fix repairs it, the budget is positive again",
        f"available ${drifted.available_usd} -> found {dry.found} -> repaired {fixed.repaired} -> "
        f"available ${healed.available_usd}; rerun found {again.found or 'nothing'}",
        ok,
    )


async def _final_row(demo: Demo, position_id: int) -> dict[str, Any] | None:
    row = next(p for p in await demo.client.positions() if p["id"] == position_id)
    return row if row["status"] in ("closed", "failed") else None


async def wait_for(check: Callable[[], Awaitable[Any]], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.5)
    return None


SCENARIOS = [
    seed_000_no_phantom_short,
    seed_003_ghost_at_aged_close,
    quantity_mismatch,
    manual_close_by_signal,
    seed_000_phantom_cleanup,
    seed_000_paper_drift,
]


# ---------------------------------------------------------------- stack
@contextlib.asynccontextmanager
async def demo_stack(settings: Settings) -> AsyncIterator[tuple[Settings, str | None]]:
    """Use configured servers, or the running `egis dev up`, or start the embedded stack."""
    running = settings.running_stack()
    if settings.database_url and settings.temporal_address:
        yield settings, None
        return
    if running:
        print(f"using the stack already running for {settings.data_dir} (egis dev up)")
        yield (
            settings.model_copy(
                update={"database_url": running["database_url"], "temporal_address": running["temporal_address"]}
            ),
            running.get("ui_url"),
        )
        return
    print("starting the embedded stack: PostgreSQL, Temporal (web UI), worker ...", flush=True)
    started = time.monotonic()
    stack = Stack(
        settings, worker_log=settings.data_dir / "logs" / "worker.log", worker_env={"EGIS_WATCH_TICK_SECONDS": "1"}
    )
    await stack.start()
    print(f"stack up in {time.monotonic() - started:.1f}s (worker log: {settings.data_dir / 'logs' / 'worker.log'})")
    try:
        yield (
            settings.model_copy(
                update={"database_url": stack.database_url, "temporal_address": stack.temporal_address}
            ),
            stack.ui_url,
        )
    finally:
        print("stopping the stack ...", flush=True)
        await stack.stop()


async def run_demo(settings: Settings, *, keep: bool = False) -> int:
    run_id = time.strftime("%Y%m%d%H%M%S")
    sim: SimulatorServer = await start_simulator(api_keys=dict(KEYS.values()))
    write_demo_accounts(settings, sim.base_url)
    print(f"exchange simulators (Binance USD-M + Bybit v5 protocols) on {sim.base_url}")
    try:
        async with demo_stack(settings) as (effective, ui_url), EgisClient.from_settings(effective) as client:
            health = await client.health(timeout=60)
            print(f"worker ok (database {health.database}, schema {health.migrations_head})\n")
            async with SimulatorControl(sim.base_url) as control:
                demo = Demo(client, control, run_id)
                for scenario in SCENARIOS:
                    try:
                        await scenario(demo)
                    except EgisError as exc:
                        demo.report(scenario.__name__, "-", f"error: {exc}", False)
                print()
                rows = [s.__dict__ | {"ok": "yes" if s.ok else "NO"} for s in demo.steps]
                print(table(rows, ["scenario", "expected", "observed", "ok"], title="Egis demo"))
                print(f"\npositions: egis positions --data-dir {settings.data_dir}")
                if ui_url:
                    print(f'Temporal web UI: {ui_url}  (try the query: BotId = "demo-bybit-aged")')
                if keep:
                    print("--keep: everything stays up; Ctrl-C stops it", flush=True)
                    await _until_signalled()
            return 0 if all(s.ok for s in demo.steps) else 1
    finally:
        await sim.stop()


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
