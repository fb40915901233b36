"""Egis against simulators that answer like the real venues (issue 12): what the venues really
do, and what Egis does about it. Real PostgreSQL, real Temporal, real ccxt.

- a ghost's exit comes from trade history read in the venues' 7-day windows, whatever its age;
  a liquidation ends the position as `liquidated`, auto-deleveraging as `auto_deleveraged`;
- a market order answered NEW / 0 is followed up by client id, never recorded as a zero fill,
  and an order whose earlier send may have reached the venue is never sent blind again (Binance
  accepts a filled order's client id again; Bybit's history lags);
- a ban (429 then 418, Bybit 403) is waited out by one back-off per account: nothing goes out
  meanwhile, and a close requested during it still closes;
- a skewed clock is learnt at start and again after -1021 / 10002;
- a hedge-mode account and an open below the venue's minimum notional are refused before
  anything is written.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal

import pytest
import pytest_asyncio
from sqlalchemy import func, select, update
from temporalio.testing import WorkflowEnvironment

from activities.deps import Deps
from chaos import invariants
from egis import metrics
from egis.db.schema import exchange_backoffs, orders, positions
from egis.errors import HedgeModeAccount, QuantityRejected
from egis.exchanges.backoff import Backoff, ip_wide
from egis.models import CloseRequest, Exchange
from egis.simulator.control import SimulatorControl
from tests.conftest import ACCOUNTS, SIM_KEYS
from tests.lifecycle import Harness, counter, eventually, harness

D = Decimal
LIVE = [Exchange.BINANCEUSDM, Exchange.BYBIT]


@pytest_asyncio.fixture
async def h(temporal_env: WorkflowEnvironment, deps: Deps) -> AsyncIterator[Harness]:
    async with harness(temporal_env.client, deps) as built:
        yield built


async def db_orders(h: Harness, position_id: int) -> list[dict]:  # type: ignore[type-arg]
    async with h.deps.engine.connect() as conn:
        rows = await conn.execute(select(orders).where(orders.c.position_id == position_id).order_by(orders.c.id))
        return [dict(r) for r in rows.mappings()]


async def age_position(h: Harness, position_id: int, days: int) -> None:
    async with h.deps.engine.begin() as conn:
        await conn.execute(
            update(positions)
            .where(positions.c.id == position_id)
            .values(
                created_at=positions.c.created_at - timedelta(days=days),
                opened_at=positions.c.opened_at - timedelta(days=days),
            )
        )


# ---------------------------------------------------------------- a ghost's exit, whatever its age
@pytest.mark.parametrize("exchange", LIVE)
async def test_the_exit_of_a_ghost_older_than_a_week_is_found(
    h: Harness, sim_control: SimulatorControl, exchange: Exchange
) -> None:
    """Opened 20 days ago, stopped out on the exchange today: the venues answer trade history in
    7-day windows, so asking "since opened_at" alone finds nothing; Egis reads the windows back."""
    bot = await h.bot(exchange)
    view = await h.open(bot)
    key = SIM_KEYS[exchange.value][0]
    await sim_control.age_account(key, 20 * 24 * 3600)
    await age_position(h, view.position_id, 20)
    await sim_control.close_position(key, "BTCUSDT", price="61000")  # the stop, today
    result = await h.client.close_position(view.workflow_id, CloseRequest(reason="manual"))
    assert result is not None and result.outcome.value == "ghost" and result.orders_sent == 0
    assert result.exit_reason == "closed_on_exchange" and result.exit_price == D(61000)
    assert result.realized_pnl == (D(61000) - view.entry_price) * view.quantity


@pytest.mark.parametrize(("action", "reason"), [("liquidate", "liquidated"), ("auto_deleverage", "auto_deleveraged")])
@pytest.mark.parametrize("exchange", LIVE)
async def test_a_liquidation_or_adl_is_told_apart(
    h: Harness, sim_control: SimulatorControl, exchange: Exchange, action: str, reason: str
) -> None:
    bot = await h.bot(exchange)
    view = await h.open(bot)
    key = SIM_KEYS[exchange.value][0]
    await getattr(sim_control, action)(key, "BTCUSDT", price="55000")
    result = await h.client.close_position(view.workflow_id, CloseRequest(reason="manual"))
    assert result is not None and result.status == "closed" and result.orders_sent == 0
    assert result.exit_reason == reason and result.exit_price == D(55000)


# ---------------------------------------------------------------- orders that do not lean on the venue
async def test_a_binance_market_order_answered_new_is_followed_up_not_recorded_as_zero(
    h: Harness, sim_control: SimulatorControl
) -> None:
    await sim_control.settings(binance_market_new_answer=True)
    bot = await h.bot(Exchange.BINANCEUSDM)
    view = await h.open(bot)
    assert view.status == "open" and view.quantity == D("0.002")
    row = await h.deps.store.get_position(view.position_id)
    assert row["status"] == "open" and row["quantity"] == D("0.002")
    result = await h.client.close_position(view.workflow_id, CloseRequest(reason="manual"))
    assert result is not None and result.status == "closed" and result.orders_sent == 1
    key = SIM_KEYS["binanceusdm"][0]
    accepted = [o["client_order_id"] for o in await sim_control.orders(key) if o["outcome"] == "accepted"]
    assert len(accepted) == len(set(accepted)) == 2  # one open, one close: nothing doubled


@pytest.mark.parametrize("exchange", LIVE)
async def test_a_lost_answer_with_a_lagging_look_up_is_never_sent_twice(
    h: Harness, sim_control: SimulatorControl, exchange: Exchange
) -> None:
    """The order is accepted but its answer is lost; the look-up by client id cannot see it for a
    while (Bybit's history delay with the realtime cache empty; on Binance, where a filled id may
    be used again, a look-up failing for a while). Egis waits instead of resending: one order."""
    key = SIM_KEYS[exchange.value][0]
    route = "POST /fapi/v1/order" if exchange is Exchange.BINANCEUSDM else "POST /v5/order/create"
    if exchange is Exchange.BYBIT:
        await sim_control.settings(bybit_realtime_closed_cap=0, bybit_history_delay_ms=4000)
    else:
        await sim_control.add_fault(
            "GET /fapi/v1/order", "error", 3, code=-2013, msg="Order does not exist.", api_key=key
        )
    await sim_control.add_fault(route, "accept_then_timeout", seconds=3, api_key=key)
    bot = await h.bot(exchange)
    view = await h.open(bot)
    assert view.status == "open"
    creates = [o for o in await sim_control.orders(key) if not o["reduce_only"]]
    assert [o["outcome"] for o in creates] == ["accepted"]  # never a second send while it might exist
    (order,) = [o for o in await db_orders(h, view.position_id) if o["intent"] == "open"]
    assert order["status"] == "filled" and order["submissions"] == 1


async def test_at_most_one_filled_order_per_row_with_the_invariant(h: Harness, sim_control: SimulatorControl) -> None:
    """The chaos invariant counts accepted orders per client id at the venue: a second acceptance
    (which Binance allows for a filled id) is a violation."""
    bot = await h.bot(Exchange.BINANCEUSDM)
    view = await h.open(bot)
    key, _ = SIM_KEYS["binanceusdm"]
    assert await invariants.no_position_from_a_close(h.deps.engine, sim_control, {ACCOUNTS["binanceusdm"]: key}) == []
    (order,) = [o for o in await db_orders(h, view.position_id) if o["intent"] == "open"]
    gateway = await h.deps.gateways.get(Exchange.BINANCEUSDM, ACCOUNTS["binanceusdm"])
    ex = gateway._ex  # the same id again, as a blind resend would do
    await ex.create_order("BTC/USDT:USDT", "market", "buy", "0.002", None, {"clientOrderId": order["client_order_id"]})
    found = await invariants.no_position_from_a_close(h.deps.engine, sim_control, {ACCOUNTS["binanceusdm"]: key})
    assert [v.invariant for v in found] == ["one_order_per_client_id"]


# ---------------------------------------------------------------- bans
async def test_a_binance_ban_is_waited_out_by_one_back_off_per_account(
    h: Harness, sim_control: SimulatorControl
) -> None:
    """429 with Retry-After, then 418 for a caller that does not back off: the first throttling
    answer starts the account's back-off (shared through PostgreSQL), nothing more goes out until
    it ends, and the close requested meanwhile closes once it has."""
    await sim_control.settings(binance_ban_seconds=4)
    bot = await h.bot(Exchange.BINANCEUSDM)
    view = await h.open(bot)
    key = SIM_KEYS["binanceusdm"][0]
    await sim_control.add_fault("GET /fapi/v3/positionRisk", "ban", seconds=4, api_key=key)
    account = ACCOUNTS["binanceusdm"]
    backoffs = counter(metrics.EXCHANGE_BACKOFFS, exchange="binanceusdm", account=account)
    started = time.time()
    result = await h.client.close_position(view.workflow_id, CloseRequest(reason="manual"))
    assert result is not None and result.status == "closed" and result.outcome.value == "closed"
    assert time.time() - started >= 3  # it waited for the Retry-After
    assert counter(metrics.EXCHANGE_BACKOFFS, exchange="binanceusdm", account=account) == backoffs + 1
    answers = [r for r in await sim_control.requests() if r["api_key"] == key and r["time_ms"] >= started * 1000]
    assert [r["fault"] for r in answers if r["fault"]] == ["ban"]  # the 429 only: never a 418
    async with h.deps.engine.connect() as conn:
        (until,) = (await conn.execute(select(exchange_backoffs.c.until))).one()
    assert until.timestamp() <= time.time()  # the shared deadline, now past


async def test_a_bybit_ip_ban_stops_every_request_of_the_account(h: Harness, sim_control: SimulatorControl) -> None:
    """Bybit answers HTTP 403 when an IP exceeds its limit and lifts it after at least 10 minutes
    (docs/v5/rate-limit.mdx), with no Retry-After: Egis backs off 10 minutes, sends nothing meanwhile,
    and the close still completes once the back-off is over."""
    bot = await h.bot(Exchange.BYBIT)
    view = await h.open(bot)
    key = SIM_KEYS["bybit"][0]
    await sim_control.add_fault("GET /v5/position/list", "ban", seconds=2, api_key=key)
    started = time.time()
    await h.client.close_position(view.workflow_id, CloseRequest(reason="manual"), wait=False)
    gateway = await h.deps.gateways.get(Exchange.BYBIT, ACCOUNTS["bybit"])
    assert await eventually(lambda: _backing_off(gateway), timeout=15)
    assert 590 < await gateway.backoff.remaining() <= 600
    await asyncio.sleep(3)  # the venue's own ban is over, ours is not: nothing may go out
    answers = [r for r in await sim_control.requests() if r["api_key"] == key and r["time_ms"] >= started * 1000]
    assert [r["fault"] for r in answers] == ["ban"]
    async with h.deps.engine.begin() as conn:  # ten minutes later
        await conn.execute(update(exchange_backoffs).values(until=func.now()))
    gateway.backoff._until = 0.0
    row = await eventually(lambda: _closed(h, view.position_id), timeout=90)
    assert row["exit_reason"] == "manual"


@pytest.mark.parametrize(
    ("exchange", "status", "code", "ip"),
    [
        ("binanceusdm", 418, "-1003", True),  # an IP ban
        ("binanceusdm", 429, "-1003", True),  # the IP's request weight
        ("binanceusdm", 429, "-1015", False),  # too many orders: the account's
        ("bybit", 403, None, True),  # the IP's limit
        ("bybit", 200, "10006", False),  # per UID
    ],
)
def test_which_limits_are_the_ips(exchange: str, status: int, code: str | None, ip: bool) -> None:
    assert ip_wide(exchange, status, code) is ip


async def test_an_ip_wide_back_off_stops_every_account_calling_that_endpoint(deps: Deps) -> None:
    """Binance counts weight per IP: a 429 on one account must stop the others too (calling during
    the back-off gets the IP banned), but not the accounts of another endpoint (the testnet)."""
    venue = f"http://127.0.0.1:1/{time.time_ns()}"  # an endpoint of this test alone
    a, b = Backoff("binanceusdm", "ip-a", deps.engine, venue), Backoff("binanceusdm", "ip-b", deps.engine, venue)
    elsewhere = Backoff("binanceusdm", "ip-c", deps.engine, venue + "-testnet")
    assert await b.remaining() == 0
    await a.impose(5, "429 -1015: too many orders")  # the account's own limit
    b._read_at = elsewhere._read_at = -1.0
    assert await b.remaining() == 0
    await a.impose(60, "429 -1003: too much request weight", ip=True)
    b._read_at = elsewhere._read_at = -1.0
    assert 55 < await b.remaining() <= 60
    assert await elsewhere.remaining() == 0
    async with deps.engine.begin() as conn:
        mine = exchange_backoffs.c.account.in_(["ip-a", a.ip_row])  # over: later tests' calls go out
        await conn.execute(update(exchange_backoffs).where(mine).values(until=func.now()))


async def _backing_off(gateway) -> bool:  # type: ignore[no-untyped-def]
    return await gateway.backoff.remaining() > 0


async def _closed(h: Harness, position_id: int) -> dict | None:  # type: ignore[type-arg]
    row = await h.deps.store.get_position(position_id)
    return row if row["status"] == "closed" else None


# ---------------------------------------------------------------- clocks
@pytest.mark.parametrize("exchange", LIVE)
async def test_a_skewed_venue_clock_is_learnt_and_relearnt(
    h: Harness, sim_control: SimulatorControl, exchange: Exchange
) -> None:
    await sim_control.settings(clock_offset_ms=45_000)
    bot = await h.bot(exchange)
    view = await h.open(bot)
    assert view.status == "open"
    await sim_control.settings(clock_offset_ms=-30_000)  # the venue's clock jumps: -1021 / 10002 once
    await asyncio.sleep(0.1)
    result = await h.client.close_position(view.workflow_id, CloseRequest(reason="manual"))
    assert result is not None and result.status == "closed"
    skew = metrics.EXCHANGE_CLOCK_SKEW_MS.labels(exchange.value, ACCOUNTS[exchange.value])._value.get()
    assert 25_000 < skew < 35_000


# ---------------------------------------------------------------- refused before anything is written
@pytest.mark.parametrize("exchange", LIVE)
async def test_an_open_on_a_hedge_mode_account_is_refused(
    h: Harness, sim_control: SimulatorControl, exchange: Exchange
) -> None:
    await sim_control.set_position_mode(SIM_KEYS[exchange.value][0], hedge=True)
    bot = await h.bot(exchange)
    with pytest.raises(HedgeModeAccount, match=r"hedge mode.*one-way"):
        await h.open(bot)
    async with h.deps.engine.connect() as conn:
        assert (await conn.execute(select(positions))).all() == []
    assert [o for o in await sim_control.orders(SIM_KEYS[exchange.value][0])] == []


async def test_an_open_below_the_venue_minimum_notional_is_refused_before_anything_is_written(h: Harness) -> None:
    bot = await h.bot(Exchange.BINANCEUSDM)
    with pytest.raises(QuantityRejected, match="notional"):
        await h.open(bot, usd="60")  # Binance BTCUSDT: at least 100 USDT
    async with h.deps.engine.connect() as conn:
        assert (await conn.execute(select(positions))).all() == []
