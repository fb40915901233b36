"""Section 10: 10,000 open positions (full mode; `scale_per_account` x 5 accounts).

Its own simulator lists the five default markets plus `scale_per_account` synthetic ones
(`egis.simulator.markets.synthetic_markets`), so that each account can hold one live position
per symbol (one-way mode) and one account can hold 2,000 positions. Five accounts, one bot
each: a Binance account whose bot has an aged policy (every position is aged `scale_aged_after_s` after it
opens and waits in its grace phase for breakeven, which never comes: each symbol's price is
lowered as soon as its aged position is open), a second Binance account, two Bybit accounts (2,000
positions is ten pages of /v5/position/list) and a paper account priced by the same simulator.

Measured first with the system empty (the "baseline" column), then with every position open:
- worker, Temporal and PostgreSQL resident memory (RSS, with their child processes);
- exchange sync of one account (`egis sync`: one read of the account, compared with the
  database) and paper reconciliation;
- the price watcher's tick on the aged account (the `check_aged_exits` activity, from the
  watcher's history: phases, targets, one tickers request for the account);
- manual close p50 / p99 (`closes` positions, one after the other);
- the time to restart the worker (kill -9, start, pollers back) and have every open position
  answer its `state` query again (each is replayed into the new worker's cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import psutil
from temporalio.api.enums.v1 import EventType

from bench.config import Sizes
from bench.env import (
    BOT_BUDGET,
    UNTHROTTLED,
    Account,
    BenchEnv,
    BenchError,
    Slot,
    served_queues,
    wait_for_pollers,
)
from bench.report import Row, SectionResult
from bench.stats import percentile, summary
from egis.exchanges.accounts import AccountConfig, PriceSource, write_account
from egis.models import (
    AgedPolicy,
    BotSpec,
    CloseRequest,
    Exchange,
    watcher_workflow_id,
)
from egis.simulator.control import SimulatorControl
from egis.simulator.markets import DEFAULT_MARKETS, synthetic_markets
from egis.simulator.server import start_simulator
from workflows.position import PositionWorkflow

NAME = "10 scale"
USD = Decimal(20)  # above every synthetic market's minimum order value (5)
QUERY_CONCURRENCY = 100


def aged_policy(after_s: int) -> AgedPolicy:
    """Aged `after_s` after the open, then a month of grace at breakeven: watched every tick, never
    closed (each symbol's price is lowered right after its aged position opens)."""
    return AgedPolicy(
        max_age_s=after_s,
        grace_s=30 * 24 * 3600,
        loss_step_pct=Decimal(1),
        max_loss_pct=Decimal(5),
        expire_s=31 * 24 * 3600,
    )


AGED_CHUNK = 50
"""Aged positions opened (and their prices lowered) this many at a time: a chunk opens well within
`scale_aged_after_s`, so none reaches its grace phase at its entry price."""
LAYOUT = (
    ("aged", Exchange.BINANCEUSDM),
    ("bn", Exchange.BINANCEUSDM),
    ("by1", Exchange.BYBIT),
    ("by2", Exchange.BYBIT),
    ("pp", Exchange.PAPER),
)


async def run(env: BenchEnv, sizes: Sizes) -> SectionResult:
    per = sizes.scale_per_account
    extra = synthetic_markets(per)
    sim = await start_simulator(markets=(*DEFAULT_MARKETS, *extra))
    try:
        async with SimulatorControl(sim.base_url) as control:
            await control.settings(**UNTHROTTLED)
            scale = _Scale(env, control, sim.base_url, {m.symbol: m.initial_price for m in extra}, sizes)
            data = await scale.measure()
    finally:
        await sim.stop()
    return SectionResult(NAME, _rows(data), data)


class _Scale:
    def __init__(
        self, env: BenchEnv, control: SimulatorControl, base_url: str, prices: dict[str, Decimal], sizes: Sizes
    ) -> None:
        self.env, self.control, self.base_url, self.sizes = env, control, base_url, sizes
        self.prices = prices
        self.symbols = list(prices)
        tag = uuid.uuid4().hex[:4]
        self.tag = tag
        self.aged_opened = 0.0
        self.accounts = {name: Account(f"bench-sc{tag}-{name}", ex, f"bench-sc{tag}-{name}-key") for name, ex in LAYOUT}

    async def measure(self) -> dict[str, Any]:
        await self._create_accounts()
        data: dict[str, Any] = {"positions": 0, "per_account": self.sizes.scale_per_account}
        closes = self.sizes.scale_closes
        # --- the empty system: a few positions only (the closes' baseline, the watcher's first ticks)
        few = await self._open("by1", self.symbols[-closes:], "base")
        aged_one = await self._open_aged(self.symbols[:1], "one")
        empty = {
            "rss_mb": self._rss(),
            "sync_s": await self._sync_times(),
            "close_ms": await self._closes(few),
        }
        await self._until_aged()  # the watcher ticks with one aged position
        empty |= {"tick_ms": await self._ticks(), "restart": await self._restart(aged_one)}
        # --- load: every account full (the aged account's first symbol is open already)
        started = time.perf_counter()
        loaded = {"aged": aged_one + await self._open_aged(self.symbols[1:], "load")}
        for name in self.accounts:
            if name != "aged":
                loaded[name] = await self._open(name, self.symbols, "load")
        open_s = time.perf_counter() - started
        data["positions"] = sum(len(ids) for ids in loaded.values())
        data["open_s"] = open_s
        data["reopened"] = self.env.reopened
        # the closes on the same account as the baseline's (by1); every other position stays open
        victims = loaded["by1"][-closes:]
        rest = [w for ids in loaded.values() for w in ids if w not in set(victims)]
        full = {
            "rss_mb": self._rss(),
            "sync_s": await self._sync_times(),
            "close_ms": await self._closes(victims),
        }
        await self._until_aged()
        full |= {"tick_ms": await self._ticks(), "restart": await self._restart(rest)}
        data |= {"empty": empty, "full": full}
        return data

    # ------------------------------------------------------------ setup
    async def _create_accounts(self) -> None:
        env = self.env
        for name, account in self.accounts.items():
            config = AccountConfig(
                exchange=account.exchange,
                api_key=None if account.exchange is Exchange.PAPER else account.api_key,
                secret=None if account.exchange is Exchange.PAPER else f"{account.ref}-secret",
                base_url=None if account.exchange is Exchange.PAPER else self.base_url,
                activities_per_second=0,
                stream=False,
                price_source=PriceSource(base_url=self.base_url) if account.exchange is Exchange.PAPER else None,
                starting_balance=Decimal(10_000_000),
            )
            write_account(env.settings.resolved_accounts_dir, account.ref, config)
            spec = BotSpec(
                name=account.ref,
                exchange=account.exchange,
                account=account.ref,
                budget_usd=BOT_BUDGET,
                aged=aged_policy(self.sizes.scale_aged_after_s) if name == "aged" else None,
            )
            await env.client.create_bot(spec, actor="bench")
        live = [a for a in self.accounts.values() if a.exchange is not Exchange.PAPER]
        await self.control.add_api_keys({a.api_key: f"{a.ref}-secret" for a in live})
        for account in live:
            await self.control.set_balance(account.api_key, Decimal(10_000_000))
        await wait_for_pollers(env.temporal, env.worker, served_queues(env.settings, self.accounts.values()))

    async def _open_aged(self, symbols: list[str], tag: str) -> list[str]:
        """Open the aged account's positions AGED_CHUNK at a time, lowering each chunk's prices by 10 %
        as soon as it is open: every aged long stays below its entry (no breakeven exit)."""
        ids: list[str] = []
        for first in range(0, len(symbols), AGED_CHUNK):
            chunk = symbols[first : first + AGED_CHUNK]
            ids += await self._open("aged", chunk, f"{tag}{first}")  # a ref per chunk: <tag><first>-<i>
            for symbol in chunk:
                await self.control.set_price(symbol, self.prices[symbol] * Decimal("0.9"))
            self.aged_opened = time.monotonic()
        return ids

    async def _until_aged(self) -> None:
        """Wait until the last aged position is in its grace phase and the watcher has ticked thrice."""
        ticks = 3 * self.env.settings.watch_tick_seconds
        await asyncio.sleep(max(0.0, self.aged_opened + self.sizes.scale_aged_after_s - time.monotonic()) + ticks)

    async def _open(self, name: str, symbols: list[str], tag: str) -> list[str]:
        """Open a long in each symbol on the account, wait until all are open; their workflow ids."""
        slots = [Slot(self.accounts[name], symbol) for symbol in symbols]
        opened = await self.env.open_positions(slots, tag, timeout=60 + len(slots), usd=USD)
        return [o.workflow_id for o in opened]

    # ------------------------------------------------------------ measurements
    def _rss(self) -> dict[str, float]:
        out = {}
        for name, (pid, descendants) in self.env.pids().items():
            if name.startswith("bench"):
                continue
            proc = psutil.Process(pid)
            procs = [proc, *proc.children(recursive=True)] if descendants else [proc]
            total = 0
            for p in procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += p.memory_info().rss
            out[name] = total / 2**20
        return out

    async def _sync_times(self) -> dict[str, float]:
        out = {}
        for name, account in self.accounts.items():
            if account.exchange is Exchange.PAPER:
                started = time.perf_counter()
                await self.env.client.reconcile_paper(fix=False, debug=False, actor="bench")
            else:
                started = time.perf_counter()
                reports = await self.env.client.sync(account.exchange, account.ref)
                if any(r.ghosts or r.drifts or r.orphans for r in reports):
                    raise BenchError(f"section 10: sync of {account.ref} found differences: {reports}")
            out[name] = time.perf_counter() - started
        return out

    async def _ticks(self) -> dict[str, float]:
        """The last ticks of the aged account's watcher: check_aged_exits start -> completion."""
        account = self.accounts["aged"]
        watcher = watcher_workflow_id(self.env.settings.task_queue, account.exchange, account.ref)
        history = await self.env.temporal.get_workflow_handle(watcher).fetch_history()
        started: dict[int, float] = {}
        durations = []
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                started[event.activity_task_started_event_attributes.scheduled_event_id] = (
                    event.event_time.ToDatetime().timestamp()
                )
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                scheduled = event.activity_task_completed_event_attributes.scheduled_event_id
                if scheduled in started:
                    durations.append(event.event_time.ToDatetime().timestamp() - started[scheduled])
        if not durations:
            raise BenchError(f"section 10: the watcher {watcher} has not ticked")
        last = durations[-3:]
        return {"ticks": len(last), "p50": percentile(last, 50) * 1000, "max": max(last) * 1000}

    async def _closes(self, workflow_ids: list[str]) -> dict[str, float]:
        latencies = []
        for workflow_id in workflow_ids:
            started = time.perf_counter()
            result = await self.env.client.close_position(workflow_id, CloseRequest(), wait=True)
            latencies.append(time.perf_counter() - started)
            if result is None or result.status != "closed":
                raise BenchError(f"section 10: a close ended {result}")
        return summary(latencies, 1000)

    async def _restart(self, workflow_ids: list[str]) -> dict[str, float]:
        """kill -9 the worker, start it, then query every position until each answers."""
        env = self.env
        started = time.perf_counter()
        await env.kill_worker()
        await env.start_worker()  # (the killed worker's pollers stay listed for a while: no "pollers back" figure)
        gate = asyncio.Semaphore(QUERY_CONCURRENCY)

        async def ask(workflow_id: str) -> None:
            async with gate:
                for _ in range(10):
                    try:
                        view = await env.temporal.get_workflow_handle(workflow_id).query(
                            PositionWorkflow.state, rpc_timeout=timedelta(seconds=60)
                        )
                    except Exception:  # the worker is still catching up: ask again
                        await asyncio.sleep(1)
                        continue
                    if view.status != "open":
                        raise BenchError(f"section 10: {workflow_id} answers {view.status}")
                    return
                raise BenchError(f"section 10: {workflow_id} never answered its state query")

        await asyncio.gather(*(ask(w) for w in workflow_ids))
        return {"positions": len(workflow_ids), "all_answering_s": time.perf_counter() - started}


def _rows(data: dict[str, Any]) -> list[Row]:
    empty, full = data["empty"], data["full"]
    n = data["positions"]
    base = "the same, system nearly empty"
    rows = [
        Row(NAME, "open positions (5 accounts)", n),
        Row(NAME, "  time to open them all (s)", data["open_s"]),
        Row(NAME, "  opens refused under load, started again", data.get("reopened", 0)),
    ]
    for proc in full["rss_mb"]:
        rows.append(Row(NAME, f"RSS {proc} (MB)", full["rss_mb"][proc], empty["rss_mb"][proc], base))
    for name in full["sync_s"]:
        what = "paper reconciliation (s)" if name == "pp" else f"sync cycle, account {name} (s)"
        rows.append(Row(NAME, what, full["sync_s"][name], empty["sync_s"][name], f"{base} (0-{data['per_account']})"))
    rows.append(
        Row(
            NAME,
            f"price-watch tick, {data['per_account']} aged positions (ms)",
            full["tick_ms"]["p50"],
            empty["tick_ms"]["p50"],
            "one aged position",
        )
    )
    rows.append(Row(NAME, "manual close p50 under load (ms)", full["close_ms"]["p50"], empty["close_ms"]["p50"], base))
    rows.append(Row(NAME, "manual close p99 under load (ms)", full["close_ms"]["p99"], empty["close_ms"]["p99"], base))
    rows.append(
        Row(
            NAME,
            f"worker kill -9, restart -> all {full['restart']['positions']} answer `state` (s)",
            full["restart"]["all_answering_s"],
            empty["restart"]["all_answering_s"],
            f"{empty['restart']['positions']} position(s)",
        )
    )
    return rows
