"""Section 3: ghosts (seed 003), on Bybit simulator accounts used by nothing else.

(i) A position closed on the exchange (SimulatorControl.close_position) before its close is
    requested: the manual close (`request_close` update) must find it gone and close it as
    `closed_on_exchange` without sending an order. Timed from the request to the update's
    answer (the row is closed by then). Baseline: the same request on a live position of the
    same accounts (a normal close, with its order), interleaved one by one.
(ii) Passive detection, no close requested: the exchange-sync schedule (egis.schedules.install,
    interval `sync_every_s`) finds the ghost and its workflow closes it. Timed from the
    exchange-side close to the row's `closed_at`; the exchange-side closes are spread over three
    intervals so they fall at every phase of the schedule. Baseline: the interval itself.

Orders are counted on the simulator: a reduce-only order whose client order id is a ghost's
close order id (`eg<uid>c<attempt>`, egis.db.store.client_order_id) is an order sent to a ghost.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

from bench.config import Sizes
from bench.env import BenchEnv, BenchError, Opened, Slot
from bench.report import Row, SectionResult
from bench.stats import summary, timed
from egis import schedules
from egis.models import CloseRequest

NAME = "3 ghosts"
SPREAD_INTERVALS = 3
DETECTION_TIMEOUT_S = 120.0


async def run(env: BenchEnv, sizes: Sizes) -> SectionResult:
    requested, ghosts = await _requested(env, env.slots("gc")[: 2 * sizes.ghost_closes])
    passive, passive_ghosts = await _passive(env, env.slots("gp")[: sizes.ghost_passive], sizes.sync_every_s)
    orders_sent = await _orders_sent_to(env, ghosts + passive_ghosts)
    data = {"requested": requested, "passive": passive, "orders_sent_to_ghosts": orders_sent}
    ghost_ms, normal_ms, normal = requested["ghost_ms"], requested["normal_ms"], "normal close, same accounts"
    delay, every, interval = passive["delay_s"], sizes.sync_every_s, "the sync interval (s)"
    rows = [
        Row(NAME, "orders sent to ghosts (reduce-only, on the exchange)", orders_sent, 0, "must be 0"),
        Row(NAME, "requested close of a ghost p50 (ms)", ghost_ms["p50"], normal_ms["p50"], normal),
        Row(NAME, "  p95 (ms)", ghost_ms["p95"], normal_ms["p95"], normal),
        Row(NAME, "  closed as ghosts (no order)", requested["ghosts"], requested["n"], "ghost closes requested"),
        Row(NAME, f"passive detection p50 (s, sync every {every:g} s)", delay["p50"], every, interval),
        Row(NAME, "  p95 (s)", delay["p95"], every, interval),
        Row(NAME, "  max (s)", delay["max"], every, interval),
        Row(NAME, "  closed as closed_on_exchange", passive["closed_on_exchange"], passive["n"], "ghosts planted"),
    ]
    return SectionResult(NAME, rows, data, {"ghost_orders_sent": orders_sent})


async def _requested(env: BenchEnv, slots: list[Slot]) -> tuple[dict[str, Any], list[Opened]]:
    opened = await env.open_positions(slots, "ghost")
    ghosts, normals = opened[0::2], opened[1::2]
    latencies: dict[str, list[float]] = {"ghost": [], "normal": []}
    found = 0
    for ghost, normal in zip(ghosts, normals, strict=True):
        await env.control.close_position(ghost.slot.account.api_key, ghost.slot.symbol)
        for kind, position in (("ghost", ghost), ("normal", normal)):
            seconds, result = await timed(
                lambda p=position: env.client.close_position(p.workflow_id, CloseRequest(), wait=True)
            )
            latencies[kind].append(seconds)
            found += kind == "ghost" and result is not None and result.outcome == "ghost"
    data = {
        "n": len(ghosts),
        "ghosts": found,
        "ghost_ms": summary(latencies["ghost"], 1000),
        "normal_ms": summary(latencies["normal"], 1000),
    }
    return data, ghosts


async def _passive(env: BenchEnv, slots: list[Slot], every_s: float) -> tuple[dict[str, Any], list[Opened]]:
    opened = await env.open_positions(slots, "passive")
    accounts = sorted({(p.slot.account.exchange, p.slot.account.ref) for p in opened})
    options = schedules.Options(sync_every=timedelta(seconds=every_s))
    await schedules.install(env.temporal, env.settings.task_queue, accounts, options)
    try:
        closed_at = await _close_on_exchange_spread(env, opened, every_s * SPREAD_INTERVALS / len(opened))
        rows = await env.wait_for_status([p.workflow_id for p in opened], {"closed"}, DETECTION_TIMEOUT_S)
    finally:
        for entry in await schedules.list_schedules(env.temporal, env.settings.task_queue):
            await env.temporal.get_schedule_handle(entry["id"]).delete()
    delays = [rows[p.workflow_id]["closed_at"].timestamp() - closed_at[p.workflow_id] for p in opened]
    if min(delays) < 0:
        raise BenchError("a passive ghost was closed in the database before it was closed on the exchange")
    on_exchange = sum(row["exit_reason"] == "closed_on_exchange" for row in rows.values())
    data = {"n": len(opened), "closed_on_exchange": on_exchange, "every_s": every_s, "delay_s": summary(delays)}
    return data, opened


async def _close_on_exchange_spread(env: BenchEnv, opened: list[Opened], gap_s: float) -> dict[str, float]:
    """Close each position on the exchange, `gap_s` apart; returns when each was closed (epoch s)."""
    closed_at = {}
    for position in opened:
        await env.control.close_position(position.slot.account.api_key, position.slot.symbol)
        closed_at[position.workflow_id] = time.time()
        await asyncio.sleep(gap_s)
    return closed_at


async def _orders_sent_to(env: BenchEnv, ghosts: list[Opened]) -> int:
    """Reduce-only orders the simulator received with one of these positions' close order ids."""
    rows = await env.position_rows(g.workflow_id for g in ghosts)
    prefixes = tuple(f"eg{row['uid']}c" for row in rows.values())
    total = 0
    for account in {g.slot.account for g in ghosts}:
        orders = await env.control.orders(account.api_key)
        total += sum(bool(o["reduce_only"]) and (o["client_order_id"] or "").startswith(prefixes) for o in orders)
    return total
