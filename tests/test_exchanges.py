"""The exchange layer against the simulators with the real ccxt client, and the paper exchange
in real PostgreSQL: open -> close, idempotent submission, one-transaction paper fills, and
bad input refused before anything is sent."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import event, func, select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.deps import Deps
from activities.positions import PositionActivities
from chaos import invariants
from egis import faults
from egis.db import store as db
from egis.db.schema import audit_events, orders, paper_fills, paper_positions, positions
from egis.errors import QuantityRejected, UnknownSymbol
from egis.exchanges.base import OrderRequest
from egis.models import (
    BotSpec,
    CloseFailedInput,
    CloseInput,
    CloseOutcomeKind,
    Exchange,
    Intent,
    OpenInput,
    OrderSide,
    PlaceOrderInput,
    PlanOpenInput,
    ReservedPosition,
    ReserveInput,
    Side,
)
from egis.simulator.control import SimulatorControl
from tests.conftest import ACCOUNTS, SIM_KEYS

D = Decimal


async def open_reserved(deps: Deps, exchange: Exchange, usd: str = "120", ref: str = "r1") -> ReservedPosition:
    bot = f"bot-{exchange.value}"
    if not [b for b in await deps.store.list_bots() if b.name == bot]:
        await deps.store.create_bot(
            BotSpec(name=bot, exchange=exchange, account=ACCOUNTS[exchange.value], budget_usd=D(1000)), actor="test"
        )
    acts = PositionActivities(deps)
    plan = await ActivityEnvironment().run(
        acts.plan_open, PlanOpenInput(exchange=exchange, account=ACCOUNTS[exchange.value], symbol="BTCUSDT", usd=D(usd))
    )
    return await deps.store.reserve_position(
        ReserveInput(
            workflow_id=f"wf-{bot}-{ref}",
            bot=bot,
            symbol="BTCUSDT",
            side=Side.LONG,
            usd=D(usd),
            quantity=plan.quantity,
            exchange=exchange,
            account=ACCOUNTS[exchange.value],
        ),
        actor="test",
    )


async def sim_orders(control: SimulatorControl, exchange: Exchange) -> list[dict]:  # type: ignore[type-arg]
    key = SIM_KEYS[exchange.value][0] if exchange is not Exchange.PAPER else None
    return [o for o in await control.orders(key)] if key else []


@pytest.mark.parametrize("exchange", list(Exchange))
async def test_open_then_close(exchange: Exchange, deps: Deps, sim_control: SimulatorControl) -> None:
    acts = PositionActivities(deps)
    env = ActivityEnvironment()
    reserved = await open_reserved(deps, exchange)
    opened = await env.run(acts.place_open_order, PlaceOrderInput(order_id=reserved.order_id))
    assert opened.status == "filled" and opened.position_status == "open"
    assert opened.filled_quantity == D("0.002") and opened.average_price == D("60000")

    result = await env.run(
        acts.close_position, CloseInput(position_id=reserved.position_id, reason="manual", attempt=1)
    )
    assert result.outcome is CloseOutcomeKind.CLOSED and result.status == "closed"
    assert result.exit_price == D("60000") and result.realized_pnl == D(0) and result.exit_reason == "manual"

    async with deps.engine.connect() as conn:
        close_order = (await conn.execute(select(orders).where(orders.c.intent == "close"))).mappings().one()
        position = (await conn.execute(select(positions))).mappings().one()
    assert close_order["reduce_only"] and close_order["side"] == "sell" and close_order["status"] == "filled"
    assert position["status"] == "closed" and position["closed_quantity"] == position["quantity"]
    if exchange is Exchange.PAPER:
        async with deps.engine.connect() as conn:
            paper = (await conn.execute(select(paper_positions))).mappings().one()
        assert paper["status"] == "closed" and paper["position_id"] == reserved.position_id
    else:
        sent = await sim_orders(sim_control, exchange)
        assert [(o["side"].lower(), o["reduce_only"], o["client_order_id"]) for o in sent] == [
            ("buy", False, reserved.client_order_id),
            ("sell", True, close_order["client_order_id"]),
        ]
        assert await sim_control.positions(SIM_KEYS[exchange.value][0]) == []
    assert (await deps.store.budget(f"bot-{exchange.value}")).available_usd == D("1000.00")


@pytest.mark.parametrize("exchange", [Exchange.BINANCEUSDM, Exchange.BYBIT])
async def test_an_open_and_a_close_each_commit_twice_and_count_one_send(exchange: Exchange, deps: Deps) -> None:
    """Issue 15: the write that creates an order (the reservation, the close's begin) also counts
    its first send, after the checks the send needs (the market takes the quantity, the account
    is not backing off): one transaction less per order, and the rows still say one send each."""
    bot = f"bot-{exchange.value}"
    await deps.store.create_bot(
        BotSpec(name=bot, exchange=exchange, account=ACCOUNTS[exchange.value], budget_usd=D(1000)), actor="test"
    )
    acts, env = PositionActivities(deps), ActivityEnvironment()
    commits: list[int] = []

    def count(_conn: object) -> None:
        commits.append(1)

    event.listen(deps.engine.sync_engine, "commit", count)
    try:
        opened = await env.run(
            acts.open_position,
            OpenInput(
                workflow_id=f"wf-{bot}-commits",
                bot=bot,
                symbol="BTCUSDT",
                side=Side.LONG,
                usd=D(120),
                exchange=exchange,
                account=ACCOUNTS[exchange.value],
            ),
        )
        assert opened.status == "filled" and opened.position_status == "open"
        assert len(commits) == 2  # the reservation with its send counted, then the fill
        commits.clear()
        closed = await env.run(
            acts.close_position, CloseInput(position_id=opened.position_id, reason="manual", attempt=1)
        )
        assert closed.status == "closed" and closed.orders_sent == 1
        assert len(commits) == 2  # the close order with its send counted, then the fill
    finally:
        event.remove(deps.engine.sync_engine, "commit", count)
    async with deps.engine.connect() as conn:
        rows = (await conn.execute(select(orders).order_by(orders.c.id))).mappings().all()
    sent = [(r["intent"], r["status"], r["submissions"]) for r in rows]
    assert sent == [("open", "filled", 1), ("close", "filled", 1)]
    assert all(r["submitted_at"] is not None for r in rows)


@pytest.mark.parametrize("exchange", [Exchange.BINANCEUSDM, Exchange.BYBIT])
async def test_lost_response_then_retry_yields_exactly_one_order(
    exchange: Exchange, deps: Deps, sim_control: SimulatorControl
) -> None:
    """The exchange accepts the order but the answer never arrives, and the follow-up look-up
    fails too: the activity attempt fails. Its retry looks the order up by client id instead
    of sending it again."""
    acts = PositionActivities(deps)
    reserved = await open_reserved(deps, exchange)
    key = SIM_KEYS[exchange.value][0]
    order_route = "POST /fapi/v1/order" if exchange is Exchange.BINANCEUSDM else "POST /v5/order/create"
    lookup_route = "GET /fapi/v1/order" if exchange is Exchange.BINANCEUSDM else "GET /v5/order/realtime"
    await sim_control.add_fault(order_route, "accept_then_timeout", seconds=3, api_key=key)
    await sim_control.add_fault(
        lookup_route, "http", count=5, http_status=503, body="Service Unavailable.", api_key=key
    )
    with pytest.raises(ApplicationError, match="retry"):
        await ActivityEnvironment().run(acts.place_open_order, PlaceOrderInput(order_id=reserved.order_id))
    await sim_control.clear_faults()
    outcome = await ActivityEnvironment().run(acts.place_open_order, PlaceOrderInput(order_id=reserved.order_id))
    assert outcome.status == "filled" and outcome.position_status == "open"
    accepted = [o for o in await sim_control.orders(key) if o["outcome"] == "accepted"]
    assert len(accepted) == 1 and accepted[0]["client_order_id"] == reserved.client_order_id
    row = await deps.store.get_order_row(reserved.order_id)
    assert row["submissions"] == 1  # sent once; the retry only looked


async def test_paper_failure_between_paper_fill_and_positions_write_changes_neither(deps: Deps) -> None:
    acts = PositionActivities(deps)
    reserved = await open_reserved(deps, Exchange.PAPER)

    async def snapshot() -> tuple[object, ...]:
        async with deps.engine.connect() as conn:
            return (
                (await conn.execute(select(func.count()).select_from(paper_positions))).scalar_one(),
                (await conn.execute(select(func.count()).select_from(paper_fills))).scalar_one(),
                dict((await conn.execute(select(positions))).mappings().one()),
                (await conn.execute(select(orders.c.status, orders.c.filled_quantity))).one(),
            )

    before = await snapshot()
    faults.enable("after_paper_write", "raise")
    try:
        with pytest.raises(faults.InjectedFault):
            await ActivityEnvironment().run(acts.place_open_order, PlaceOrderInput(order_id=reserved.order_id))
    finally:
        faults.disable_all()
    assert await snapshot() == before  # neither the paper tables nor positions/orders moved
    outcome = await ActivityEnvironment().run(acts.place_open_order, PlaceOrderInput(order_id=reserved.order_id))
    assert outcome.position_status == "open"
    after = await snapshot()
    assert after[0] == 1 and after[1] == 1 and after[2]["status"] == "open"  # type: ignore[index]


@pytest.mark.parametrize("exchange", list(Exchange))
async def test_bad_gateway_input_fails_before_anything_is_sent(
    exchange: Exchange, deps: Deps, sim_control: SimulatorControl
) -> None:
    gateway = await deps.gateways.get(exchange, ACCOUNTS[exchange.value])

    def order(symbol: str, quantity: str) -> OrderRequest:
        return OrderRequest(Intent.OPEN, symbol, OrderSide.BUY, D(quantity), False, f"bad-{symbol}-{quantity}")

    with pytest.raises(UnknownSymbol):
        await gateway.create_order(order("NOPEUSDT", "1"))
    with pytest.raises(QuantityRejected, match="below the market minimum"):
        await gateway.create_order(order("SOLUSDT", "0.5"))  # on the 0.1 step, under the minimum 1
    with pytest.raises(QuantityRejected, match="multiple of the amount step"):
        await gateway.create_order(order("BTCUSDT", "0.0015"))  # step 0.001
    requests = await sim_control.requests()
    assert not [r for r in requests if r["method"] == "POST"], "nothing may be sent"
    async with deps.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(paper_fills))).scalar_one() == 0


async def test_close_failed_reopens_the_position_and_retires_the_unsent_close_order(deps: Deps) -> None:
    """A close activity that died for good after `begin_close` (status closing, order written,
    nothing sent): `close_failed` puts the position back to open with the error, audited, and
    the unsent order becomes not_sent, so nothing is left pending for a later look-up."""
    acts = PositionActivities(deps)
    reserved = await open_reserved(deps, Exchange.BINANCEUSDM)
    await ActivityEnvironment().run(acts.place_open_order, PlaceOrderInput(order_id=reserved.order_id))
    async with deps.engine.begin() as conn:
        order = await db.begin_close(conn, reserved.position_id, 1, D("0.002"), actor="test", reason="manual")
    assert (await deps.store.get_position(reserved.position_id))["status"] == "closing"
    (stuck,) = await invariants.orders_settled(deps.engine)  # the chaos invariant sees it
    assert stuck.invariant == "orders_settled" and order["client_order_id"] in stuck.detail
    result = await ActivityEnvironment().run(
        acts.close_failed, CloseFailedInput(position_id=reserved.position_id, error="credentials rejected")
    )
    assert result.status == "open" and result.outcome is CloseOutcomeKind.FAILED
    row = await deps.store.get_position(reserved.position_id)
    assert row["status"] == "open" and row["last_error"] == "credentials rejected" and row["quantity"] == D("0.002")
    after = await deps.store.get_order_row(order["id"])
    assert after["status"] == "not_sent" and after["error_message"] == "credentials rejected"
    assert await invariants.orders_settled(deps.engine) == []
    async with deps.engine.connect() as conn:
        audit = (
            await conn.execute(
                select(audit_events.c.action, audit_events.c.before, audit_events.c.after).where(
                    audit_events.c.entity_id == str(reserved.position_id), audit_events.c.action == "close_failed"
                )
            )
        ).one()
    assert audit.before["status"] == "closing" and audit.after["status"] == "open"


async def test_binance_reads_one_symbols_position_without_the_whole_account(
    deps: Deps, sim_control: SimulatorControl
) -> None:
    """The check before an open (and a close's verify) asks Binance for the one symbol: ccxt's
    fetch_positions asks for every position of the account and parses each, a cost that grew with
    the account (2,000 positions: 15 opens a minute). The account-wide read still reads them all."""
    gateway = await deps.gateways.get(Exchange.BINANCEUSDM, ACCOUNTS["binanceusdm"])
    await gateway.create_order(OrderRequest(Intent.OPEN, "ETHUSDT", OrderSide.BUY, D("0.5"), False, "sym-eth"))
    await gateway.create_order(OrderRequest(Intent.OPEN, "BTCUSDT", OrderSide.SELL, D("0.01"), False, "sym-btc"))
    before = len(await sim_control.requests())
    held = await gateway.fetch_symbol_positions("ETHUSDT")
    assert [(p.symbol, p.side, p.quantity) for p in held] == [("ETHUSDT", Side.LONG, D("0.5"))]
    everything = await gateway.fetch_positions()
    assert sorted((p.symbol, p.side, p.quantity) for p in everything) == [
        ("BTCUSDT", Side.SHORT, D("0.01")),
        ("ETHUSDT", Side.LONG, D("0.5")),
    ]
    reads = [(r["path"], r["query"].get("symbol")) for r in (await sim_control.requests())[before:]]
    assert reads == [("/fapi/v3/positionRisk", "ETHUSDT"), ("/fapi/v3/positionRisk", None)]


async def test_bybit_prices_read_the_symbols_ticker_alone(deps: Deps, sim_control: SimulatorControl) -> None:
    """ccxt's fetch_tickers reads and parses every linear ticker on Bybit even for one symbol (each
    open reads its symbol's price: 40 % of the worker's CPU at 2,000 listed symbols); the gateway
    asks for the symbol, or for all in one request when several are wanted, and reads `lastPrice`."""
    gateway = await deps.gateways.get(Exchange.BYBIT, ACCOUNTS["bybit"])
    before = len(await sim_control.requests())
    await sim_control.set_price("ETHUSDT", "3000.5")
    assert await gateway.fetch_tickers(["ETHUSDT"]) == {"ETHUSDT": D("3000.5")}
    assert await gateway.fetch_tickers(["ETHUSDT", "BTCUSDT"]) == {"ETHUSDT": D("3000.5"), "BTCUSDT": D("60000")}
    with pytest.raises(UnknownSymbol):
        await gateway.fetch_tickers(["NOPEUSDT"])
    tickers = [(r["path"], r["query"].get("symbol")) for r in (await sim_control.requests())[before:]]
    assert [t for t in tickers if "ticker" in t[0]] == [("/v5/market/tickers", "ETHUSDT"), ("/v5/market/tickers", None)]


async def test_binance_prices_cost_one_or_two_weight_not_forty(deps: Deps, sim_control: SimulatorControl) -> None:
    """ccxt's fetch_tickers reads Binance's 24 h ticker of every symbol (weight 40) even for one; the
    price watch ticks every few seconds on every account of one IP, so the gateway reads the symbol
    price ticker instead (weight 1 for one symbol, 2 for all) and answers the same prices."""
    gateway = await deps.gateways.get(Exchange.BINANCEUSDM, ACCOUNTS["binanceusdm"])
    before = len(await sim_control.requests())
    await sim_control.set_price("ETHUSDT", "3000.5")
    assert await gateway.fetch_tickers(["BTCUSDT"]) == {"BTCUSDT": D("60000")}
    assert await gateway.fetch_tickers(["ETHUSDT", "BTCUSDT"]) == {"ETHUSDT": D("3000.5"), "BTCUSDT": D("60000")}
    tickers = [(r["path"], r["query"].get("symbol")) for r in (await sim_control.requests())[before:]]
    tickers = [t for t in tickers if "ticker" in t[0]]
    assert tickers == [("/fapi/v1/ticker/price", "BTCUSDT"), ("/fapi/v1/ticker/price", None)]
