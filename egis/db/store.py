"""Transactional operations on the positions store.

Functions take an `AsyncConnection` inside a transaction, so several can share one (the paper
exchange applies its own fill and the internal fill in ONE transaction, seed 000 §7).
`Store` wraps them, one transaction per call, for everyone else.

Every mutation writes an audit event (actor, action, reason, before, after) in the same
transaction. The rules themselves (intent, budget) live in `egis.rules`; this module only
loads rows, calls them, and writes what they return.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, and_, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from egis.db.schema import audit_events, bots, orders, positions
from egis.errors import (
    DuplicateBot,
    IntentViolation,
    InvalidInput,
    InvalidTransition,
    PositionAlreadyOpen,
    PositionNotFound,
    UnknownBot,
)
from egis.models import (
    FINAL_STATUSES,
    RESERVING_STATUSES,
    AgedPolicy,
    BotSpec,
    BotView,
    BudgetView,
    ErrorClass,
    Exchange,
    Intent,
    OrderOutcome,
    OrderSide,
    OrderStatus,
    PositionStatus,
    ReservedPosition,
    ReserveInput,
    Side,
    order_side_for,
)
from egis.rules import budget as budget_rule
from egis.rules.intent import OrderRef, PositionSnapshot, apply_fill, increment

ONE_WAY_EXCHANGES = frozenset({Exchange.BINANCEUSDM, Exchange.BYBIT, Exchange.PAPER})
"""Exchanges where an account holds one net position per symbol (one-way mode; paper mimics it)."""


def jsonable(value: Any) -> Any:
    """Rows to JSON for audit events: Decimals as strings (exact), datetimes as ISO 8601."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return format(value, "f")  # plain: 60000, never 6E+4
    if isinstance(value, datetime):
        return value.isoformat()
    return value


async def audit(
    conn: AsyncConnection,
    *,
    actor: str,
    action: str,
    reason: str,
    entity: str,
    entity_id: object,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    run_id: int | None = None,
) -> None:
    await conn.execute(
        audit_events.insert().values(
            actor=actor,
            action=action,
            reason=reason,
            entity=entity,
            entity_id=str(entity_id),
            before=jsonable(dict(before)) if before is not None else None,
            after=jsonable(dict(after)) if after is not None else None,
            run_id=run_id,
        )
    )


async def mutate(
    conn: AsyncConnection,
    table: Table,
    before: Mapping[str, Any],
    values: Mapping[str, Any],
    *,
    actor: str,
    action: str,
    reason: str,
    run_id: int | None = None,
) -> dict[str, Any]:
    """Update one row (already read and locked as `before`), stamp updated_at, and audit the
    change with its before and after images, in the caller's transaction. Every automated
    mutation of bots, positions and paper positions goes through here."""
    key = next(iter(table.primary_key.columns))
    after = (
        (
            await conn.execute(
                update(table).where(key == before[key.name]).values(**values, updated_at=func.now()).returning(*table.c)
            )
        )
        .mappings()
        .one()
    )
    await audit(
        conn,
        actor=actor,
        action=action,
        reason=reason,
        entity=table.name,
        entity_id=before[key.name],
        before=before,
        after=after,
        run_id=run_id,
    )
    return dict(after)


# ---------------------------------------------------------------- bots
def _bot_view(row: Mapping[str, Any]) -> BotView:
    aged = None
    if row["aged_max_age_s"] is not None:
        aged = AgedPolicy(
            max_age_s=row["aged_max_age_s"],
            grace_s=row["aged_grace_s"],
            loss_step_pct=row["aged_loss_step_pct"],
            max_loss_pct=row["aged_max_loss_pct"],
            expire_s=row["aged_expire_s"],
        )
    return BotView(
        name=row["name"],
        exchange=Exchange(row["exchange"]),
        account=row["account"],
        budget_usd=row["budget_usd"],
        aged=aged,
    )


async def create_bot(conn: AsyncConnection, spec: BotSpec, *, actor: str) -> BotView:
    values: dict[str, Any] = {
        "name": spec.name,
        "exchange": spec.exchange.value,
        "account": spec.account,
        "budget_usd": spec.budget_usd,
    }
    if spec.aged is not None:
        values |= {
            "aged_max_age_s": spec.aged.max_age_s,
            "aged_grace_s": spec.aged.grace_s,
            "aged_loss_step_pct": spec.aged.loss_step_pct,
            "aged_max_loss_pct": spec.aged.max_loss_pct,
            "aged_expire_s": spec.aged.expire_s,
        }
    try:
        async with conn.begin_nested():
            row = (await conn.execute(bots.insert().values(**values).returning(*bots.c))).mappings().one()
    except IntegrityError as exc:
        raise DuplicateBot(f"bot {spec.name!r} already exists") from exc
    await audit(
        conn,
        actor=actor,
        action="bot_created",
        reason="requested",
        entity="bots",
        entity_id=spec.name,
        before=None,
        after=row,
    )
    return _bot_view(row)


async def get_bot(conn: AsyncConnection, name: str, *, lock: bool = False) -> BotView:
    query = select(bots).where(bots.c.name == name)
    if lock:
        query = query.with_for_update()
    row = (await conn.execute(query)).mappings().one_or_none()
    if row is None:
        raise UnknownBot(f"unknown bot {name!r}")
    return _bot_view(row)


async def list_bots(conn: AsyncConnection) -> list[BotView]:
    rows = (await conn.execute(select(bots).order_by(bots.c.name))).mappings().all()
    return [_bot_view(r) for r in rows]


async def set_budget(conn: AsyncConnection, name: str, budget_usd: Decimal, *, actor: str) -> BudgetView:
    """Change a bot's budget; refuses to go below what its live positions already hold."""
    await get_bot(conn, name, lock=True)
    view = await budget_view(conn, name)
    if budget_usd < view.reserved_usd:
        raise InvalidInput(f"bot {name!r} has ${view.reserved_usd} in live positions; the budget cannot go below that")
    before = (await conn.execute(select(bots).where(bots.c.name == name))).mappings().one()
    await mutate(
        conn, bots, before, {"budget_usd": budget_usd}, actor=actor, action="budget_changed", reason="requested"
    )
    return await budget_view(conn, name)


# ---------------------------------------------------------------- budget
def _reserving() -> Any:
    return positions.c.status.in_([s.value for s in RESERVING_STATUSES])


async def budget_view(conn: AsyncConnection, bot_name: str, bot: BotView | None = None) -> BudgetView:
    """The bot's budget, read from `positions` only (the single source of truth); `bot`: its row,
    when the caller has read (and locked) it already."""
    bot = bot if bot is not None else await get_bot(conn, bot_name)
    reserved, count = (
        await conn.execute(
            select(func.coalesce(func.sum(positions.c.size_usd), 0), func.count()).where(
                positions.c.bot == bot_name, _reserving()
            )
        )
    ).one()
    reserved = budget_rule.to_cents(Decimal(reserved))
    return BudgetView(
        bot=bot_name,
        budget_usd=bot.budget_usd,
        reserved_usd=reserved,
        available_usd=budget_rule.available(bot.budget_usd, reserved),
        reserving_positions=count,
    )


# ---------------------------------------------------------------- positions
def snapshot(row: Mapping[str, Any]) -> PositionSnapshot:
    return PositionSnapshot(
        side=Side(row["side"]),
        status=PositionStatus(row["status"]),
        quantity=row["quantity"],
        closed_quantity=row["closed_quantity"],
        entry_price=row["entry_price"],
        exit_price=row["exit_price"],
        realized_pnl=row["realized_pnl"],
    )


async def get_position(conn: AsyncConnection, position_id: int, *, lock: bool = False) -> dict[str, Any]:
    query = select(positions).where(positions.c.id == position_id)
    if lock:
        query = query.with_for_update()
    row = (await conn.execute(query)).mappings().one_or_none()
    if row is None:
        raise PositionNotFound(f"no position with id {position_id}")
    return dict(row)


async def get_order(conn: AsyncConnection, order_id: int, *, lock: bool = False) -> dict[str, Any]:
    query = select(orders).where(orders.c.id == order_id)
    if lock:
        query = query.with_for_update()
    row = (await conn.execute(query)).mappings().one_or_none()
    if row is None:
        raise InvalidInput(f"no order with id {order_id}")
    return dict(row)


def client_order_id(uid: str, intent: Intent, attempt: int) -> str:
    """Deterministic per (position, intent, attempt): a retried send is looked up, not re-sent.

    `uid` is random per position row, so a fresh database can never collide with orders an
    older installation left on the same exchange account. At most 20 characters (Binance and
    Bybit accept 36).
    """
    return f"eg{uid}{intent.value[0]}{attempt}"


@dataclass(frozen=True)
class Written:
    """The position and order rows a write left (no second read), and whether this call counted
    the order's first send (`sending`: the caller sends it next, nothing checked in between)."""

    position: dict[str, Any]
    order: dict[str, Any]
    counted: bool = False

    def reserved(self) -> ReservedPosition:
        return ReservedPosition(
            position_id=self.position["id"],
            uid=self.position["uid"],
            order_id=self.order["id"],
            client_order_id=self.order["client_order_id"],
        )


async def reserve_position(conn: AsyncConnection, req: ReserveInput, *, actor: str) -> ReservedPosition:
    """Reserve budget and insert the position (opening) with its OPEN order (see reserve_returning)."""
    return (await reserve_returning(conn, req, actor=actor)).reserved()


async def reserve_returning(conn: AsyncConnection, req: ReserveInput, *, actor: str, sending: bool = False) -> Written:
    """Reserve budget and insert the position (opening) with its OPEN order, in one transaction;
    returns both rows as written. `sending`: the caller has checked the order may go out and sends
    it right after the commit, so its first send is counted here (one transaction less per open).

    Holding a row lock on the bot serializes concurrent opens of that bot, so the sum of
    reservations can never exceed its budget. Idempotent per workflow id: a retried call
    returns the rows the first call wrote (and counts nothing).
    """
    existing = (
        (await conn.execute(select(positions).where(positions.c.workflow_id == req.workflow_id)))
        .mappings()
        .one_or_none()
    )
    if existing is not None:
        order = (
            (
                await conn.execute(
                    select(orders).where(orders.c.position_id == existing["id"], orders.c.intent == Intent.OPEN.value)
                )
            )
            .mappings()
            .one()
        )
        return Written(dict(existing), dict(order))
    bot = await get_bot(conn, req.bot, lock=True)
    if bot.exchange != req.exchange or bot.account != req.account:
        raise InvalidInput(f"bot {req.bot!r} trades on {bot.exchange}/{bot.account}, not {req.exchange}/{req.account}")
    await _refuse_conflicting_positions(conn, req)
    view = await budget_view(conn, req.bot, bot)
    budget_rule.check_reservation(req.bot, bot.budget_usd, view.reserved_usd, req.usd)

    uid = secrets.token_hex(6)
    position = (
        (
            await conn.execute(
                positions.insert()
                .values(
                    uid=uid,
                    bot=req.bot,
                    exchange=req.exchange.value,
                    account=req.account,
                    symbol=req.symbol,
                    side=req.side.value,
                    status=PositionStatus.OPENING.value,
                    size_usd=budget_rule.to_cents(req.usd),
                    workflow_id=req.workflow_id,
                )
                .returning(*positions.c)
            )
        )
        .mappings()
        .one()
    )
    order = (
        (
            await conn.execute(
                orders.insert()
                .values(
                    position_id=position["id"],
                    intent=Intent.OPEN.value,
                    exchange=req.exchange.value,
                    account=req.account,
                    symbol=req.symbol,
                    side=order_side_for(Intent.OPEN, req.side).value,
                    quantity=req.quantity,
                    reduce_only=False,
                    client_order_id=client_order_id(uid, Intent.OPEN, 1),
                    status=OrderStatus.PENDING.value,
                    **_first_send(sending),
                )
                .returning(*orders.c)
            )
        )
        .mappings()
        .one()
    )
    await audit(
        conn,
        actor=actor,
        action="position_reserved",
        reason=f"open {req.side} {req.symbol} ${req.usd}",
        entity="positions",
        entity_id=position["id"],
        before=None,
        after=position,
    )
    return Written(dict(position), dict(order), counted=sending)


def _first_send(sending: bool) -> dict[str, Any]:
    """The columns of an order row whose first send is counted as it is written."""
    return {"submissions": 1, "submitted_at": func.now()} if sending else {}


async def _refuse_conflicting_positions(conn: AsyncConnection, req: ReserveInput) -> None:
    live = positions.c.status.in_([s.value for s in RESERVING_STATUSES])
    same = (
        await conn.execute(
            select(positions.c.id).where(
                positions.c.bot == req.bot,
                positions.c.symbol == req.symbol,
                positions.c.side == req.side.value,
                live,
            )
        )
    ).first()
    if same is not None:
        raise PositionAlreadyOpen(
            f"bot {req.bot!r} already has a live {req.side} {req.symbol} position (id {same[0]})",
            position_id=same[0],
        )
    if req.exchange not in ONE_WAY_EXCHANGES:
        return
    # One-way mode nets every position of an account in a symbol: a second live position
    # there (another bot's, or the other side) would silently merge with the first.
    await conn.execute(
        text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
        {"k": f"{req.exchange}/{req.account}/{req.symbol}"},
    )
    other = (
        await conn.execute(
            select(positions.c.id, positions.c.bot, positions.c.side).where(
                positions.c.exchange == req.exchange.value,
                positions.c.account == req.account,
                positions.c.symbol == req.symbol,
                live,
            )
        )
    ).first()
    if other is not None:
        raise PositionAlreadyOpen(
            f"account {req.exchange}/{req.account} already holds a live {req.symbol} position "
            f"(id {other.id}, bot {other.bot!r}, {other.side}); one-way mode would net the two",
            position_id=other.id,
        )


@dataclass(frozen=True)
class FillReport:
    """An exchange's cumulative report for one order."""

    exchange_order_id: str | None
    filled_quantity: Decimal
    average_price: Decimal | None


async def record_fill(
    conn: AsyncConnection, order_id: int, report: FillReport, *, actor: str, exit_reason: str | None = None
) -> OrderOutcome:
    """Apply an exchange fill report to the order and its position (see record_fill_returning)."""
    outcome, _ = await record_fill_returning(conn, order_id, report, actor=actor, exit_reason=exit_reason)
    return outcome


async def record_fill_returning(
    conn: AsyncConnection, order_id: int, report: FillReport, *, actor: str, exit_reason: str | None = None
) -> tuple[OrderOutcome, dict[str, Any]]:
    """Apply an exchange fill report to the order and its position (the intent rule decides);
    returns the outcome and the position row as written (no second read).

    Idempotent: a report already applied changes nothing. A report that the intent rule refuses
    raises IntentViolation and the caller's transaction writes nothing.
    """
    order = await get_order(conn, order_id, lock=True)
    _check_report(order, report)
    if order["position_id"] is None:
        raise IntentViolation(f"order {order_id} references no position")
    position = await get_position(conn, order["position_id"], lock=True)
    inc = None
    if report.filled_quantity > 0:
        assert report.average_price is not None  # _check_report
        inc = increment(order["filled_quantity"], order["average_price"], report.filled_quantity, report.average_price)
    intent = Intent(order["intent"])
    if inc is not None:
        before = snapshot(position)
        after = apply_fill(
            before, OrderRef(intent=intent, side=OrderSide(order["side"]), position_side=before.side), inc
        )
        changes: dict[str, Any] = {
            "status": after.status.value,
            "quantity": after.quantity,
            "closed_quantity": after.closed_quantity,
            "entry_price": after.entry_price,
            "exit_price": after.exit_price,
            "realized_pnl": after.realized_pnl,
            "last_error": None,
        }
        if after.status is PositionStatus.OPEN and position["opened_at"] is None:
            changes["opened_at"] = func.now()
        if after.status is PositionStatus.CLOSED:
            changes["closed_at"] = func.now()
            changes["exit_reason"] = exit_reason or "closed"
        position = await mutate(
            conn,
            positions,
            position,
            changes,
            actor=actor,
            action=f"{intent.value}_fill",
            reason=exit_reason or f"{intent.value} order filled",
        )
    filled = report.filled_quantity if inc is not None else order["filled_quantity"]
    status = OrderStatus.FILLED if filled > 0 else OrderStatus.PENDING
    if 0 < filled < order["quantity"]:
        status = OrderStatus.PARTIALLY_FILLED
    await conn.execute(
        update(orders)
        .where(orders.c.id == order_id)
        .values(
            status=status.value,
            filled_quantity=filled,
            average_price=report.average_price if inc is not None else order["average_price"],
            exchange_order_id=report.exchange_order_id or order["exchange_order_id"],
            error_class=None,
            error_code=None,
            error_message=None,
            updated_at=func.now(),
        )
    )
    if is_final(position["status"]):
        await retire_pending_orders(conn, position["id"], f"position closed by order {order['client_order_id']}")
    outcome = OrderOutcome(
        order_id=order_id,
        client_order_id=order["client_order_id"],
        status=status,
        filled_quantity=filled,
        average_price=report.average_price if inc is not None else order["average_price"],
        position_status=PositionStatus(position["status"]),
    )
    return outcome, dict(position)


def _check_report(order: Mapping[str, Any], report: FillReport) -> None:
    filled, price = report.filled_quantity, report.average_price
    if not filled.is_finite() or filled < 0:
        raise InvalidInput(f"order {order['id']}: filled quantity must be >= 0, got {filled}")
    if filled > order["quantity"]:
        raise InvalidInput(f"order {order['id']}: filled {filled} exceeds the order quantity {order['quantity']}")
    if filled > 0 and (price is None or not price.is_finite() or price <= 0):
        raise InvalidInput(f"order {order['id']}: a fill needs a positive price, got {price}")


async def note_submission(conn: AsyncConnection, order_id: int) -> None:
    """Count one send to the exchange (so reports can show how many orders actually went out)."""
    await conn.execute(
        update(orders)
        .where(orders.c.id == order_id)
        .values(submissions=orders.c.submissions + 1, submitted_at=func.now(), updated_at=func.now())
    )


async def record_order_error(
    conn: AsyncConnection,
    order_id: int,
    error_class: ErrorClass,
    code: str | None,
    message: str,
    *,
    final: bool,
) -> None:
    """Record the last error on the order; `final` marks it rejected (a PERMANENT refusal)."""
    values: dict[str, Any] = {
        "error_class": error_class.value,
        "error_code": code,
        "error_message": message[:500],
        "updated_at": func.now(),
    }
    if final:
        values["status"] = OrderStatus.REJECTED.value
    await conn.execute(update(orders).where(orders.c.id == order_id).values(**values))


async def mark_unsent_orders(
    conn: AsyncConnection, position_id: int, intent: Intent | None = None, message: str | None = None
) -> int:
    """The position's pending orders that were never sent become `not_sent`: nothing can fill them."""
    conditions = [
        orders.c.position_id == position_id,
        orders.c.status == OrderStatus.PENDING.value,
        orders.c.submissions == 0,
    ]
    if intent is not None:
        conditions.append(orders.c.intent == intent.value)
    values: dict[str, Any] = {"status": OrderStatus.NOT_SENT.value, "updated_at": func.now()}
    if message is not None:
        values["error_message"] = message[:500]
    result = await conn.execute(update(orders).where(*conditions).values(**values))
    return result.rowcount


async def retire_pending_orders(conn: AsyncConnection, position_id: int, why: str) -> int:
    """The position is final: none of its orders may stay `pending`. One never sent becomes
    `not_sent`; one that was sent and never filled (the exchange refused it, or a look-up by
    client id found nothing) becomes `rejected`, keeping the exchange's error code. Nothing can
    fill either of them any more: the position they were for is over."""
    pending = [orders.c.position_id == position_id, orders.c.status == OrderStatus.PENDING.value]
    message = func.coalesce(orders.c.error_message, why[:500])
    unsent = await conn.execute(
        update(orders)
        .where(*pending, orders.c.submissions == 0)
        .values(status=OrderStatus.NOT_SENT.value, error_message=message, updated_at=func.now())
    )
    refused = await conn.execute(
        update(orders)
        .where(*pending, orders.c.submissions > 0)
        .values(status=OrderStatus.REJECTED.value, error_message=message, updated_at=func.now())
    )
    return unsent.rowcount + refused.rowcount


async def fail_open(conn: AsyncConnection, position_id: int, reason: str, *, actor: str) -> dict[str, Any]:
    """End a position whose OPEN order was refused: status failed, budget released (it follows status)."""
    position = await get_position(conn, position_id, lock=True)
    if position["status"] != PositionStatus.OPENING.value:
        raise InvalidTransition(f"position {position_id} is {position['status']}, not opening")
    if position["quantity"] > 0:
        raise InvalidTransition(f"position {position_id} already holds {position['quantity']}: it cannot fail")
    await retire_pending_orders(conn, position_id, reason)
    values = {
        "status": PositionStatus.FAILED.value,
        "closed_at": func.now(),
        "exit_reason": "open_failed",
        "last_error": reason[:500],
    }
    return await mutate(conn, positions, position, values, actor=actor, action="open_failed", reason=reason)


async def begin_close(
    conn: AsyncConnection, position_id: int, attempt: int, quantity: Decimal, *, actor: str, reason: str
) -> dict[str, Any]:
    """Mark the position closing and write its reduce-only CLOSE order (idempotent per attempt)."""
    return (await begin_close_returning(conn, position_id, attempt, quantity, actor=actor, reason=reason)).order


async def begin_close_returning(
    conn: AsyncConnection,
    position_id: int,
    attempt: int,
    quantity: Decimal,
    *,
    actor: str,
    reason: str,
    adjust_to: Decimal | None = None,
    adjust_reason: str = "",
    sending: bool = False,
) -> Written:
    """begin_close in one transaction with the quantity adjustment that may precede it (seed 003:
    close the exchange's quantity, audited); returns the position and order rows as written.
    `sending`: a new order's first send is counted here (see reserve_returning); an order this
    attempt wrote before is returned as it is, nothing counted."""
    if adjust_to is not None:
        await adjust_open_quantity(conn, position_id, adjust_to, actor=actor, reason=adjust_reason)
    position = await get_position(conn, position_id, lock=True)
    cid = client_order_id(position["uid"], Intent.CLOSE, attempt)
    existing = (await conn.execute(select(orders).where(orders.c.client_order_id == cid))).mappings().one_or_none()
    if existing is not None:
        return Written(position, dict(existing))
    if position["status"] not in (PositionStatus.OPEN.value, PositionStatus.CLOSING.value):
        raise InvalidTransition(f"position {position_id} is {position['status']}: it cannot be closed")
    if quantity <= 0:
        raise InvalidInput(f"close quantity must be positive, got {quantity}")
    side = Side(position["side"])
    order = (
        (
            await conn.execute(
                orders.insert()
                .values(
                    position_id=position_id,
                    intent=Intent.CLOSE.value,
                    exchange=position["exchange"],
                    account=position["account"],
                    symbol=position["symbol"],
                    side=order_side_for(Intent.CLOSE, side).value,
                    quantity=quantity,
                    reduce_only=True,
                    client_order_id=cid,
                    status=OrderStatus.PENDING.value,
                    attempt=attempt,
                    **_first_send(sending),
                )
                .returning(*orders.c)
            )
        )
        .mappings()
        .one()
    )
    if position["status"] != PositionStatus.CLOSING.value:
        values = {"status": PositionStatus.CLOSING.value}
        position = await mutate(conn, positions, position, values, actor=actor, action="close_started", reason=reason)
    return Written(position, dict(order), counted=sending)


async def close_without_order(
    conn: AsyncConnection,
    position_id: int,
    *,
    exit_reason: str,
    exit_price: Decimal | None,
    realized_pnl: Decimal | None,
    actor: str,
    why: str,
    run_id: int | None = None,
) -> dict[str, Any]:
    """Close a position that is no longer on the exchange (a ghost), or that a maintenance job
    found to be wrong. No order is involved. Exit price and PnL stay NULL when unknown.
    Idempotent: a position already final is returned unchanged."""
    position = await get_position(conn, position_id, lock=True)
    if is_final(position["status"]):
        return position
    if position["status"] == PositionStatus.OPENING.value and position["quantity"] == 0:
        raise InvalidTransition(f"position {position_id} never filled: it cannot be closed, only failed")
    await retire_pending_orders(conn, position_id, f"{exit_reason}: {why}")
    values = {
        "status": PositionStatus.CLOSED.value,
        "closed_at": func.now(),
        "exit_reason": exit_reason,
        "exit_price": exit_price,
        "realized_pnl": realized_pnl,
        "closed_quantity": position["quantity"],
        "last_error": None,
    }
    return await mutate(conn, positions, position, values, actor=actor, action=exit_reason, reason=why, run_id=run_id)


async def adjust_open_quantity(
    conn: AsyncConnection,
    position_id: int,
    open_quantity: Decimal,
    *,
    actor: str,
    reason: str,
    run_id: int | None = None,
) -> dict[str, Any]:
    """Set the position's open quantity to what the exchange holds (audited, before/after)."""
    position = await get_position(conn, position_id, lock=True)
    if open_quantity <= 0:
        raise InvalidInput("use close_without_order for a position the exchange no longer holds")
    values = {"quantity": position["closed_quantity"] + open_quantity}
    return await mutate(
        conn, positions, position, values, actor=actor, action="quantity_adjusted", reason=reason, run_id=run_id
    )


async def reopen_after_failed_close(
    conn: AsyncConnection, position_id: int, error: str, *, actor: str
) -> dict[str, Any]:
    """A close was refused for good: the position stays open, with the error, for an operator
    (a close that failed before it began leaves the position open and records the error)."""
    position = await get_position(conn, position_id, lock=True)
    if position["status"] not in (PositionStatus.CLOSING.value, PositionStatus.OPEN.value):
        return position
    values = {"status": PositionStatus.OPEN.value, "last_error": error[:500]}
    return await mutate(conn, positions, position, values, actor=actor, action="close_failed", reason=error)


async def list_positions(
    conn: AsyncConnection,
    *,
    bot: str | None = None,
    status: str | None = None,
    exchange: str | None = None,
    account: str | None = None,
    limit: int = 500,
) -> list[dict[str, Any]]:
    conditions = []
    if bot is not None:
        conditions.append(positions.c.bot == bot)
    if status is not None:
        if status not in {s.value for s in PositionStatus}:
            raise InvalidInput(f"unknown status {status!r}: one of {', '.join(s.value for s in PositionStatus)}")
        conditions.append(positions.c.status == status)
    if exchange is not None:
        conditions.append(positions.c.exchange == exchange)
    if account is not None:
        conditions.append(positions.c.account == account)
    query = select(positions).where(and_(True, *conditions)).order_by(positions.c.id.desc()).limit(limit)
    return [dict(r) for r in (await conn.execute(query)).mappings().all()]


def is_final(status: str) -> bool:
    return PositionStatus(status) in FINAL_STATUSES


class Store:
    """One transaction per call, for callers that don't compose operations."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create_bot(self, spec: BotSpec, *, actor: str) -> BotView:
        async with self.engine.begin() as conn:
            return await create_bot(conn, spec, actor=actor)

    async def get_bot(self, name: str) -> BotView:
        async with self.engine.connect() as conn:
            return await get_bot(conn, name)

    async def list_bots(self) -> list[BotView]:
        async with self.engine.connect() as conn:
            return await list_bots(conn)

    async def set_budget(self, name: str, budget_usd: Decimal, *, actor: str) -> BudgetView:
        async with self.engine.begin() as conn:
            return await set_budget(conn, name, budget_usd, actor=actor)

    async def budget(self, bot: str) -> BudgetView:
        async with self.engine.connect() as conn:
            return await budget_view(conn, bot)

    async def reserve_position(self, req: ReserveInput, *, actor: str) -> ReservedPosition:
        async with self.engine.begin() as conn:
            return await reserve_position(conn, req, actor=actor)

    async def reserve_returning(self, req: ReserveInput, *, actor: str, sending: bool) -> Written:
        async with self.engine.begin() as conn:
            return await reserve_returning(conn, req, actor=actor, sending=sending)

    async def record_fill(
        self, order_id: int, report: FillReport, *, actor: str, exit_reason: str | None = None
    ) -> OrderOutcome:
        async with self.engine.begin() as conn:
            return await record_fill(conn, order_id, report, actor=actor, exit_reason=exit_reason)

    async def fail_open(self, position_id: int, reason: str, *, actor: str) -> dict[str, Any]:
        async with self.engine.begin() as conn:
            return await fail_open(conn, position_id, reason, actor=actor)

    async def get_position(self, position_id: int) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            return await get_position(conn, position_id)

    async def get_order_row(self, order_id: int) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            return await get_order(conn, order_id)

    async def unsettled_orders(self, position_id: int, intent: Intent) -> list[dict[str, Any]]:
        """Orders of the position that were sent but whose outcome was never recorded."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(orders)
                .where(
                    orders.c.position_id == position_id,
                    orders.c.intent == intent.value,
                    orders.c.status == OrderStatus.PENDING.value,
                    orders.c.submissions > 0,
                )
                .order_by(orders.c.id)
            )
            return [dict(r) for r in rows.mappings()]

    async def reservation_of(self, workflow_id: str) -> ReservedPosition | None:
        """The position and OPEN order a workflow's reservation wrote, if it did."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(positions.c.id, positions.c.uid, orders.c.id.label("order_id"), orders.c.client_order_id)
                    .join(orders, (orders.c.position_id == positions.c.id) & (orders.c.intent == Intent.OPEN.value))
                    .where(positions.c.workflow_id == workflow_id)
                )
            ).one_or_none()
        if row is None:
            return None
        return ReservedPosition(
            position_id=row.id, uid=row.uid, order_id=row.order_id, client_order_id=row.client_order_id
        )

    async def close_snapshot(self, position_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The position and its close orders that were sent but never settled, in one connection."""
        async with self.engine.connect() as conn:
            position = await get_position(conn, position_id)
            rows = await conn.execute(
                select(orders)
                .where(
                    orders.c.position_id == position_id,
                    orders.c.intent == Intent.CLOSE.value,
                    orders.c.status == OrderStatus.PENDING.value,
                    orders.c.submissions > 0,
                )
                .order_by(orders.c.id)
            )
            return position, [dict(r) for r in rows.mappings()]

    async def close_outcome(self, position_id: int, attempt: int) -> tuple[dict[str, Any], int]:
        """The position as it ends a close attempt, and the requests that attempt sent, in one read."""
        sent = (
            select(func.coalesce(func.sum(orders.c.submissions), 0))
            .where(
                orders.c.position_id == position_id,
                orders.c.intent == Intent.CLOSE.value,
                orders.c.attempt == attempt,
            )
            .scalar_subquery()
        )
        async with self.engine.connect() as conn:
            row = (
                (await conn.execute(select(positions, sent.label("orders_sent")).where(positions.c.id == position_id)))
                .mappings()
                .one()
            )
        position = {k: v for k, v in row.items() if k != "orders_sent"}
        return position, int(row["orders_sent"])

    async def close_orders_sent(self, position_id: int, attempt: int) -> int:
        """How many requests the close orders of one close attempt sent to the exchange."""
        async with self.engine.connect() as conn:
            return (
                await conn.execute(
                    select(func.coalesce(func.sum(orders.c.submissions), 0)).where(
                        orders.c.position_id == position_id,
                        orders.c.intent == Intent.CLOSE.value,
                        orders.c.attempt == attempt,
                    )
                )
            ).scalar_one()

    async def note_exchange_order_id(self, order_id: int, exchange_order_id: str) -> None:
        """The venue accepted the order (its id is known) but nothing is filled yet."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(orders)
                .where(orders.c.id == order_id, orders.c.exchange_order_id.is_(None))
                .values(exchange_order_id=exchange_order_id, error_class=None, updated_at=func.now())
            )

    async def note_submission(self, order_id: int) -> None:
        async with self.engine.begin() as conn:
            await note_submission(conn, order_id)

    async def list_positions(self, **filters: Any) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            return await list_positions(conn, **filters)
