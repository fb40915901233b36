"""The invariants Egis promises, checked across the database, the exchange simulators and
Temporal once the system has quiesced. Used by the chaos runner and by tests.

1. Every opened position is final, and agrees with the exchange: nothing open on an exchange
   or in paper_positions that we believe closed (no ghosts, no orphans of our making).
2. No position was ever created by a close order: every position has its OPEN order, its
   first fill came from that OPEN order, and the simulator accepted at most one order per
   client order id, each one known to the database.
3. Per bot, the available budget equals the budget recomputed from positions, never negative.
4. Every workflow has finished or is waiting by design; no activity is stuck retrying.
5. No order row is pending once quiesced: each one filled, or was retired as rejected (sent,
   refused or never found, with the exchange's code) or not_sent (never sent).
6. No repair closed a position the exchange still holds: after every phantom cleanup with
   --confirm, the account holds no short in a repaired symbol that no live Egis position
   accounts for (checked by the chaos runner after each run).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import Text, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from egis.db import store
from egis.db.schema import audit_events, bots, orders, paper_positions, positions
from egis.models import Intent, Side, order_side_for
from egis.rules import budget
from egis.simulator.control import SimulatorControl

FINAL = ("closed", "failed")
WAITING_BY_DESIGN = {"PriceWatchWorkflow", "AccountStreamWorkflow"}
LONG_LIVED_ACTIVITIES = {"account_stream"}
"""Runs for an hour, and again after every worker it ran on died: its attempt count is no sign of trouble."""
STUCK_ATTEMPTS = 5


@dataclass(frozen=True)
class Violation:
    invariant: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.invariant}] {self.detail}"


async def check(
    engine: AsyncEngine,
    sim: SimulatorControl,
    api_keys: Mapping[str, str],
    temporal: Client | None = None,
    task_queue: str | None = None,
) -> list[Violation]:
    """All invariants. `api_keys` maps each live-exchange account reference to its simulator key."""
    found = await positions_final_and_agree(engine, sim, api_keys)
    found += await no_position_from_a_close(engine, sim, api_keys)
    found += await budgets_follow_positions(engine)
    found += await orders_settled(engine)
    if temporal is not None and task_queue is not None:
        found += await workflows_quiet(temporal, task_queue)
    return found


async def positions_final_and_agree(
    engine: AsyncEngine, sim: SimulatorControl, api_keys: Mapping[str, str]
) -> list[Violation]:
    out = []
    async with engine.connect() as conn:
        live = (await conn.execute(select(positions).where(positions.c.status.not_in(FINAL)))).mappings().all()
        open_paper = (await conn.execute(select(paper_positions).where(paper_positions.c.status == "open"))).all()
    for row in live:
        out.append(Violation("final", f"position {row['id']} ({row['workflow_id']}) is still {row['status']}"))
    for account, key in api_keys.items():
        for held in await sim.positions(key):
            out.append(Violation("agrees_with_exchange", f"{account} still holds {held['quantity']} {held['symbol']}"))
    for row in open_paper:
        out.append(Violation("agrees_with_exchange", f"paper position {row.id} (position {row.position_id}) open"))
    return out


async def no_position_from_a_close(
    engine: AsyncEngine, sim: SimulatorControl, api_keys: Mapping[str, str]
) -> list[Violation]:
    out = []
    async with engine.connect() as conn:
        rows = (
            await conn.execute(select(positions.c.id, positions.c.side, positions.c.quantity, positions.c.workflow_id))
        ).all()
        all_orders = (await conn.execute(select(orders))).mappings().all()
        first_fills = (
            await conn.execute(
                text(
                    "SELECT DISTINCT ON (entity_id) entity_id, action FROM audit_events "
                    "WHERE entity = 'positions' AND action IN ('open_fill', 'close_fill') ORDER BY entity_id, id"
                )
            )
        ).all()
    by_position: dict[int, list[dict]] = {}  # type: ignore[type-arg]
    for order in all_orders:
        by_position.setdefault(order["position_id"], []).append(dict(order))
    for row in rows:
        if row.workflow_id is None:
            continue  # imported from a legacy system (seed 000's leftovers): Egis never opened it
        opens = [o for o in by_position.get(row.id, []) if o["intent"] == Intent.OPEN.value]
        if len(opens) != 1:
            out.append(Violation("created_by_open", f"position {row.id} has {len(opens)} OPEN orders"))
            continue
        if opens[0]["side"] != order_side_for(Intent.OPEN, Side(row.side)).value:
            out.append(Violation("created_by_open", f"position {row.id} ({row.side}) opened by a {opens[0]['side']}"))
        for close in (o for o in by_position.get(row.id, []) if o["intent"] == Intent.CLOSE.value):
            if close["side"] != order_side_for(Intent.CLOSE, Side(row.side)).value or not close["reduce_only"]:
                out.append(Violation("created_by_open", f"close order {close['client_order_id']} could increase"))
    out += [
        Violation("created_by_open", f"position {entity_id}'s first fill was a {action}")
        for entity_id, action in first_fills
        if action != "open_fill"
    ]
    known = {o["client_order_id"] for o in all_orders}
    for account, key in api_keys.items():
        accepted = Counter(o["client_order_id"] for o in await sim.orders(key) if o["outcome"] == "accepted")
        for cid, n in accepted.items():
            if n > 1:
                out.append(Violation("one_order_per_client_id", f"{account}: {n} orders accepted for {cid}"))
            if cid not in known:
                out.append(Violation("one_order_per_client_id", f"{account}: order {cid} unknown to the database"))
    return out


async def budgets_follow_positions(engine: AsyncEngine) -> list[Violation]:
    out = []
    async with engine.connect() as conn:
        names = (await conn.execute(select(bots.c.name))).scalars().all()
        for name in names:
            view = await store.budget_view(conn, name)
            rows = (
                await conn.execute(
                    select(positions.c.size_usd).where(
                        positions.c.bot == name, positions.c.status.in_(["opening", "open", "closing"])
                    )
                )
            ).scalars()
            recomputed = budget.available(view.budget_usd, budget.reserved(Decimal(v) for v in rows))
            if view.available_usd != recomputed:
                out.append(Violation("budget", f"{name}: available {view.available_usd} != recomputed {recomputed}"))
            if view.available_usd < 0:
                out.append(Violation("budget", f"{name}: available {view.available_usd} is negative"))
    return out


async def workflows_quiet(temporal: Client, task_queue: str) -> list[Violation]:
    out = []
    async for execution in temporal.list_workflows(f'TaskQueue = "{task_queue}" AND ExecutionStatus = "Running"'):
        described = await temporal.get_workflow_handle(execution.id, run_id=execution.run_id).describe()
        if execution.workflow_type not in WAITING_BY_DESIGN:
            out.append(Violation("workflows_quiet", f"{execution.workflow_type} {execution.id} is still running"))
        for pending in described.raw_description.pending_activities:
            if pending.activity_type.name in LONG_LIVED_ACTIVITIES:
                continue
            if pending.attempt >= STUCK_ATTEMPTS:
                out.append(
                    Violation(
                        "no_stuck_activity",
                        f"{execution.id}: {pending.activity_type.name} at attempt {pending.attempt}: "
                        f"{pending.last_failure.message[:120]}",
                    )
                )
    return out


async def orders_settled(engine: AsyncEngine) -> list[Violation]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(orders.c.client_order_id, orders.c.position_id, orders.c.submissions).where(
                    orders.c.status == "pending"
                )
            )
        ).all()
    return [
        Violation("orders_settled", f"order {cid} of position {pid} ({sent} submissions) is still pending")
        for cid, pid, sent in rows
    ]


async def repairs_left_the_exchange_alone(
    engine: AsyncEngine, sim: SimulatorControl, api_keys: Mapping[str, str], run_id: int
) -> list[Violation]:
    """After a phantom cleanup run: each position it closed must not be one the exchange still
    holds, i.e. its account holds no short in that symbol that no live Egis position accounts for."""
    async with engine.connect() as conn:
        repaired = (
            await conn.execute(
                select(positions.c.id, positions.c.account, positions.c.symbol)
                .join(audit_events, audit_events.c.entity_id == func.cast(positions.c.id, Text))
                .where(
                    audit_events.c.run_id == run_id,
                    audit_events.c.entity == "positions",
                    audit_events.c.action == "phantom_cleanup",
                )
            )
        ).all()
        live = (
            await conn.execute(
                select(
                    positions.c.account, positions.c.symbol, positions.c.quantity - positions.c.closed_quantity
                ).where(positions.c.side == "short", positions.c.status.in_(["opening", "open", "closing"]))
            )
        ).all()
    out = []
    for position_id, account, symbol in repaired:
        if account not in api_keys:
            continue
        held = sum(
            (
                -p["quantity"]
                for p in await sim.positions(api_keys[account])
                if p["symbol"] == symbol and p["quantity"] < 0
            ),
            Decimal(0),
        )
        ours = sum((q for a, s, q in live if a == account and s == symbol), Decimal(0))
        if held - ours > 0:
            out.append(
                Violation(
                    "repair_left_exchange_alone",
                    f"cleanup run {run_id} closed position {position_id}, but {account} holds a {symbol} short of "
                    f"{held - ours} that no live position accounts for",
                )
            )
    return out
