"""Section 7: private streams (issue 13). How fast a position closed on the exchange behind
everyone's back is closed in the database, with the account's private stream, beside the same
run's REST exchange sync; then the same under stream faults; and the REST requests each costs.

(i) Stream: accounts `sb` (Bybit) follow their stream and have no sync schedule. One ghost at a
    time: open a position (not timed), close it on the exchange (SimulatorControl), time until
    its row is `closed` (`closed_on_exchange`). Baseline: accounts `gp` polled by the exchange
    sync at the product's default interval (15 s), no stream; closes spread over two intervals.
(ii) Under stream faults (the default sync schedule running beside the stream, as in
    production): socket dropped (ghosts closed at once, during the reconnect), a silent stall, an
    expired Binance listen key (`sn`), and kill -9 of the worker holding the streams. Ghosts
    never detected within DETECTION_TIMEOUT_S must be 0.
(iii) REST position reads per account per minute, on a quiet account: stream on (its watchdog)
    vs polling only (the sync every 15 s).
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

from bench.config import Sizes
from bench.env import BenchEnv, BenchError, Opened, Slot
from bench.report import Row, SectionResult
from bench.stats import summary
from egis import schedules
from egis.db.schema import stream_status
from egis.models import Exchange

NAME = "7 streams"
DETECTION_TIMEOUT_S = 120.0
SYNC_EVERY = timedelta(seconds=15)  # the product default


async def run(env: BenchEnv, sizes: Sizes) -> SectionResult:
    await _wait_connected(env, ["sb", "sn"])
    stream_s = await _stream_ghosts(env, env.slots("sb"), sizes.stream_ghosts)
    rest_s = await _rest_ghosts(env, env.slots("gp")[: max(10, sizes.stream_ghosts // 10)])
    faults = await _under_faults(env, sizes.stream_fault_ghosts)
    reads = await _rest_reads(env, sizes.rest_window_s)
    missed = sum(f["missed"] for f in faults.values())
    stream, rest = summary(stream_s, 1000), summary(rest_s, 1000)
    base = "REST exchange sync every 15 s, same run"
    rows = [
        Row(
            NAME, f"exchange close -> closed in DB, stream, p50 (ms, n={stream['n']})", stream["p50"], rest["p50"], base
        ),
        Row(NAME, "  p99 (ms)", stream["p99"], rest["p99"], base),
        Row(NAME, "  max (ms)", stream["max"], rest["max"], base),
        Row(NAME, "ghosts never detected under stream faults", missed, 0, "must be 0"),
    ]
    for name, result in faults.items():
        delay = result["delay_ms"]
        rows.append(Row(NAME, f"  {name}: detection p50 / max (ms)", delay["p50"], delay["max"], "max"))
    rows.append(
        Row(NAME, "REST position reads / account / min, stream on", reads["stream"], reads["polling"], "polling only")
    )
    data = {"stream_ms": stream, "rest_sync_ms": rest, "faults": faults, "rest_reads_per_min": reads}
    return SectionResult(NAME, rows, data, {"stream_ghosts_missed": missed})


async def _wait_connected(env: BenchEnv, groups: list[str], timeout: float = 120.0) -> None:
    wanted = {(a.exchange.value, a.ref) for g in groups for a in env.accounts[g]}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with env.client.engine.connect() as conn:
            rows = (await conn.execute(stream_status.select())).mappings().all()
        if wanted <= {(r["exchange"], r["account"]) for r in rows if r["connected"]}:
            return
        await asyncio.sleep(0.2)
    raise BenchError("the bench accounts' private streams did not connect")


async def _closed_after(env: BenchEnv, opened: Opened, since: float, timeout: float) -> float | None:
    """Seconds from `since` until the position's row is closed (None: not within `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = await env.position_rows([opened.workflow_id])
        row = rows.get(opened.workflow_id)
        if row is not None and row["status"] == "closed":
            if row["exit_reason"] != "closed_on_exchange":
                raise BenchError(f"{opened.workflow_id} closed as {row['exit_reason']}, not closed_on_exchange")
            return row["closed_at"].timestamp() - since
        await asyncio.sleep(0.005)
    return None


async def _stream_ghosts(env: BenchEnv, slots: list[Slot], n: int) -> list[float]:
    delays: list[float] = []
    round_ = 0
    while len(delays) < n:
        batch = slots[: n - len(delays)]
        opened = await env.open_positions(batch, f"sg{round_}")
        for position in opened:
            since = time.time()
            await env.control.close_position(position.slot.account.api_key, position.slot.symbol)
            delay = await _closed_after(env, position, since, DETECTION_TIMEOUT_S)
            if delay is None:
                raise BenchError(f"the stream never reported {position.workflow_id}")
            delays.append(delay)
        round_ += 1
    return delays


async def _rest_ghosts(env: BenchEnv, slots: list[Slot]) -> list[float]:
    opened = await env.open_positions(slots, "rg")
    accounts = sorted({(p.slot.account.exchange, p.slot.account.ref) for p in opened})
    await schedules.install(env.temporal, env.settings.task_queue, accounts, schedules.Options(sync_every=SYNC_EVERY))
    try:
        gap = 2 * SYNC_EVERY.total_seconds() / len(opened)  # closes at every phase of the schedule
        closed: dict[str, float] = {}
        for position in opened:
            await env.control.close_position(position.slot.account.api_key, position.slot.symbol)
            closed[position.workflow_id] = time.time()
            await asyncio.sleep(gap)
        rows = await env.wait_for_status([p.workflow_id for p in opened], {"closed"}, DETECTION_TIMEOUT_S)
    finally:
        await _delete_schedules(env)
    return [rows[p.workflow_id]["closed_at"].timestamp() - closed[p.workflow_id] for p in opened]


async def _under_faults(env: BenchEnv, k: int) -> dict[str, dict[str, Any]]:
    bybit, binance = env.accounts["sb"], env.accounts["sn"]
    everyone = sorted({(a.exchange, a.ref) for a in [*bybit, *binance]})
    await schedules.install(env.temporal, env.settings.task_queue, everyone, schedules.Options(sync_every=SYNC_EVERY))
    results: dict[str, dict[str, Any]] = {}
    try:
        bybit_slots, binance_slots = env.slots("sb"), env.slots("sn")

        async def drop() -> None:
            for account in bybit:
                await env.control.drop_streams("bybit", account.api_key)

        async def silence() -> None:
            for account in bybit:
                await env.control.silence_streams("bybit", account.api_key, seconds=30)

        async def expire() -> None:
            for account in binance:
                await env.control.expire_listen_key(account.api_key)

        async def kill() -> None:
            await env.kill_worker()

        cases = [
            ("socket dropped, ghosts during the reconnect", drop, bybit_slots),
            ("silent stall (no events, no pongs, 30 s)", silence, bybit_slots),
            ("listen key expired (binance)", expire, binance_slots),
            ("kill -9 of the worker holding the streams", kill, bybit_slots),
        ]
        for i, (name, fault, slots) in enumerate(cases):
            opened = await env.open_positions(slots[:k], f"sf{i}")
            await _wait_connected(env, ["sb", "sn"])
            since = time.time()
            await fault()
            for position in opened:
                await env.control.close_position(position.slot.account.api_key, position.slot.symbol)
            if fault is kill:  # the ghosts were made while no worker ran; now one comes back
                await env.start_worker()
            delays = await asyncio.gather(*(_closed_after(env, p, since, DETECTION_TIMEOUT_S) for p in opened))
            found = [d for d in delays if d is not None]
            results[name] = {
                "n": len(opened),
                "missed": len(opened) - len(found),
                "delay_ms": summary(found, 1000) if found else {"p50": None, "max": None, "n": 0},
            }
            await env.control.clear_stream_faults()
    finally:
        await _delete_schedules(env)
    return results


async def _rest_reads(env: BenchEnv, window_s: float) -> dict[str, float]:
    """Position reads per account per minute on quiet accounts: one following its stream (no sync
    schedule), one polled by the sync at 15 s (no stream)."""
    streaming, polled = env.accounts["sb"][0], env.accounts["gp"][0]
    await schedules.install(
        env.temporal, env.settings.task_queue, [(Exchange.BYBIT, polled.ref)], schedules.Options(sync_every=SYNC_EVERY)
    )
    try:
        start_ms = time.time() * 1000
        await asyncio.sleep(window_s)
        requests = [r for r in await env.control.requests() if r["time_ms"] >= start_ms]
    finally:
        await _delete_schedules(env)

    def per_minute(api_key: str) -> float:
        reads = [r for r in requests if r["api_key"] == api_key and r["path"] == "/v5/position/list"]
        return round(len(reads) * 60.0 / window_s, 1)

    return {"stream": per_minute(streaming.api_key), "polling": per_minute(polled.api_key)}


async def _delete_schedules(env: BenchEnv) -> None:
    for entry in await schedules.list_schedules(env.temporal, env.settings.task_queue):
        await env.temporal.get_schedule_handle(entry["id"]).delete()
