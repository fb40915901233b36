"""The budget rule and concurrent reservations against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from egis.db.schema import orders, positions
from egis.db.store import Store
from egis.errors import BudgetExceeded, InvalidInput, PositionAlreadyOpen
from egis.models import BotSpec, Exchange, ReserveInput, Side
from egis.rules import budget

D = Decimal


def test_available_is_exact_in_cents() -> None:
    # 0.1 + 0.2 style float drift can't happen: three reservations of $3.33 out of $9.99
    assert budget.available(D("9.99"), budget.reserved([D("3.33")] * 3)) == D("0.00")


def test_check_reservation_refuses_overspend_with_the_figures() -> None:
    with pytest.raises(BudgetExceeded) as info:
        budget.check_reservation("alpha", D("10.00"), D("9.99"), D("10.00"))
    assert "available $0.01, requested $10.00" in str(info.value)
    assert budget.check_reservation("alpha", D("10.00"), D("0"), D("10.00")) == D("0.00")


@pytest.mark.parametrize("amount", [D(0), D(-5), D("NaN")])
def test_check_reservation_refuses_non_positive_amounts(amount: Decimal) -> None:
    with pytest.raises(InvalidInput):
        budget.check_reservation("alpha", D("10"), D("0"), amount)


def reserve_input(bot: str, symbol: str, usd: str, *, n: int = 0, side: Side = Side.LONG) -> ReserveInput:
    return ReserveInput(
        workflow_id=f"wf-{bot}-{symbol}-{side}-{n}",
        bot=bot,
        symbol=symbol,
        side=side,
        usd=D(usd),
        quantity=D("1"),
        exchange=Exchange.PAPER,
        account="paper-1",
    )


async def test_fifty_concurrent_reservations_never_overspend(store: Store) -> None:
    await store.create_bot(
        BotSpec(name="alpha", exchange=Exchange.PAPER, account="paper-1", budget_usd=D("1000")), actor="test"
    )

    async def attempt(i: int) -> str:
        try:
            await store.reserve_position(reserve_input("alpha", f"C{i}USDT", "30", n=i), actor="test")
            return "reserved"
        except BudgetExceeded:
            return "refused"

    outcomes = await asyncio.gather(*(attempt(i) for i in range(50)))
    view = await store.budget("alpha")
    assert outcomes.count("reserved") == 33  # 33 x $30 = $990; a 34th would overspend
    assert outcomes.count("refused") == 17
    assert view.reserved_usd == D("990.00") and view.available_usd == D("10.00")
    assert view.available_usd >= 0


async def test_reservation_writes_position_and_open_order_together(store: Store) -> None:
    await store.create_bot(
        BotSpec(name="alpha", exchange=Exchange.PAPER, account="paper-1", budget_usd=D("100")), actor="test"
    )
    ref = await store.reserve_position(reserve_input("alpha", "BTCUSDT", "40"), actor="test")
    again = await store.reserve_position(reserve_input("alpha", "BTCUSDT", "40"), actor="test")
    assert again == ref  # idempotent per workflow id: a retried activity writes nothing new
    pos = await store.get_position(ref.position_id)
    assert pos["status"] == "opening" and pos["size_usd"] == D("40.00") and pos["quantity"] == 0
    async with store.engine.connect() as conn:
        order = (await conn.execute(select(orders).where(orders.c.id == ref.order_id))).mappings().one()
    assert order["intent"] == "open" and order["side"] == "buy" and not order["reduce_only"]
    assert order["client_order_id"] == ref.client_order_id and order["position_id"] == ref.position_id
    assert (await store.budget("alpha")).available_usd == D("60.00")
    await store.fail_open(ref.position_id, "test", actor="test")
    assert (await store.budget("alpha")).available_usd == D("100.00")  # the budget follows the status


async def test_one_live_position_per_bot_symbol_side(store: Store) -> None:
    await store.create_bot(
        BotSpec(name="alpha", exchange=Exchange.PAPER, account="paper-1", budget_usd=D("100")), actor="test"
    )
    await store.reserve_position(reserve_input("alpha", "BTCUSDT", "10", n=1), actor="test")
    with pytest.raises(PositionAlreadyOpen):
        await store.reserve_position(reserve_input("alpha", "BTCUSDT", "10", n=2), actor="test")
    # another symbol is another position
    await store.reserve_position(reserve_input("alpha", "ETHUSDT", "10", n=3), actor="test")


async def test_one_way_accounts_refuse_a_second_live_position_in_a_symbol(store: Store) -> None:
    for name in ("alpha", "beta"):
        await store.create_bot(
            BotSpec(name=name, exchange=Exchange.BINANCEUSDM, account="bn-1", budget_usd=D("100")),
            actor="test",
        )

    def req(bot: str, side: Side) -> ReserveInput:
        return ReserveInput(
            workflow_id=f"wf-{bot}-{side}",
            bot=bot,
            symbol="BTCUSDT",
            side=side,
            usd=D("10"),
            quantity=D("1"),
            exchange=Exchange.BINANCEUSDM,
            account="bn-1",
        )

    await store.reserve_position(req("alpha", Side.LONG), actor="test")
    with pytest.raises(PositionAlreadyOpen, match="one-way"):
        await store.reserve_position(req("beta", Side.LONG), actor="test")
    with pytest.raises(PositionAlreadyOpen, match="one-way"):
        await store.reserve_position(req("alpha", Side.SHORT), actor="test")
    async with store.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(positions))).scalar_one() == 1
