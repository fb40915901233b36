"""Private streams (issue 13): Egis follows each live account's websocket stream and sees a
position closed behind its back in well under a second, with the REST read as the safety net.
Real ccxt.pro against the simulator's streams, real Temporal, real PostgreSQL.

The ccxt.pro workarounds each have a test here, so upgrading ccxt shows whether each is still
needed: Binance's keep-alive (ccxt PUTs once), `listenKeyExpired` (ccxt ignores it), and the
positions snapshot that hangs when its first REST call fails (turned off).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import pytest_asyncio
from sqlalchemy import select
from temporalio.client import WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.testing import WorkflowEnvironment

import activities.streams as stream_activity
from activities.deps import Deps
from egis import metrics
from egis.db.schema import audit_events, stream_status
from egis.exchanges.accounts import AccountConfig
from egis.exchanges.ccxt_gateway import Throttle, throttle_of
from egis.exchanges.streams import AccountStream, OrderUpdate, PositionUpdate, StreamLost
from egis.models import AccountInput, CloseRequest, Exchange, SyncHint, stream_workflow_id
from egis.rules.sync import OurPosition
from egis.simulator.control import SimulatorControl
from egis.simulator.server import SimulatorServer
from tests.conftest import ACCOUNTS, SIM_KEYS
from tests.lifecycle import Harness, counter, eventually, harness

D = Decimal
LIVE = [Exchange.BINANCEUSDM, Exchange.BYBIT]


def config(exchange: Exchange, sim: SimulatorServer) -> AccountConfig:
    key, secret = SIM_KEYS[exchange.value]
    return AccountConfig(exchange=exchange, api_key=key, secret=secret, base_url=sim.base_url)


async def next_event(stream: AccountStream, wanted: type, timeout: float = 5.0) -> PositionUpdate | OrderUpdate:
    async def first() -> PositionUpdate | OrderUpdate:
        async for event in stream.events(idle=timeout):
            if event is None:
                raise TimeoutError(f"no {wanted.__name__} within {timeout}s")
            if isinstance(event, wanted):
                return event
        raise AssertionError("unreachable")

    return await asyncio.wait_for(first(), timeout * 2)


# ---------------------------------------------------------------- the ccxt.pro workarounds
async def test_binance_listen_key_expiry_ends_the_stream_loudly(
    sim: SimulatorServer, sim_control: SimulatorControl
) -> None:
    """ccxt ignores `listenKeyExpired` (missing from its dispatch table): the stream would go silent
    with no error. AccountStream turns it into StreamLost, so Egis reconnects with a new key."""
    stream = AccountStream(Exchange.BINANCEUSDM, config(Exchange.BINANCEUSDM, sim))
    try:
        await stream.start()
        assert await sim_control.expire_listen_key(SIM_KEYS["binanceusdm"][0]) is not None
        with pytest.raises(StreamLost, match="listenKeyExpired"):
            await next_event(stream, PositionUpdate)
    finally:
        await stream.close()


async def test_binance_keep_alive_is_ours(sim: SimulatorServer, sim_control: SimulatorControl) -> None:
    """ccxt's keep-alive runs once (it never finds its client again); AccountStream PUTs the key
    itself. 50 minutes, a keep-alive, 50 more: the key lives (without it, it would have expired)."""
    stream = AccountStream(Exchange.BINANCEUSDM, config(Exchange.BINANCEUSDM, sim))
    try:
        await stream.start()
        await sim_control.settings(clock_offset_ms=50 * 60_000)
        await stream.keep_alive()
        await sim_control.settings(clock_offset_ms=100 * 60_000)
        listing = await sim_control.streams(SIM_KEYS["binanceusdm"][0])
        assert [c["expired"] for c in listing["connections"]] == [False]
    finally:
        await stream.close()


@pytest.mark.parametrize("exchange", LIVE)
async def test_the_stream_connects_even_when_the_positions_snapshot_would_hang(
    exchange: Exchange, sim: SimulatorServer, sim_control: SimulatorControl
) -> None:
    """ccxt.pro's positions snapshot hangs forever when its first REST call fails: it is off, and
    the REST read after every (re)connect replaces it."""
    route = "GET /fapi/v3/positionRisk" if exchange is Exchange.BINANCEUSDM else "GET /v5/position/list"
    await sim_control.add_fault(route, "http", 5, http_status=500, body="boom")
    stream = AccountStream(exchange, config(exchange, sim))
    try:
        started = time.monotonic()
        await stream.start()
        assert time.monotonic() - started < 5
    finally:
        await stream.close()


async def test_a_refused_bybit_auth_is_an_error_not_a_hang(sim: SimulatorServer, sim_control: SimulatorControl) -> None:
    await sim_control.refuse_stream_auth("bybit", SIM_KEYS["bybit"][0])
    stream = AccountStream(Exchange.BYBIT, config(Exchange.BYBIT, sim))
    try:
        with pytest.raises(StreamLost, match="could not connect"):
            await stream.start(timeout=10)
    finally:
        await stream.close()


async def test_a_throttled_binance_connect_says_how_long_to_stay_away(
    sim: SimulatorServer, sim_control: SimulatorControl
) -> None:
    """The listenKey request answered 429 (the IP over its weight): the stream reports the back-off
    instead of a bare failure, so its activity records it for every worker and does not call again
    during it (each call during a Binance back-off turns into a ban that doubles)."""
    await sim_control.add_fault("POST /fapi/v1/listenKey", "ban", seconds=30, api_key=SIM_KEYS["binanceusdm"][0])
    stream = AccountStream(Exchange.BINANCEUSDM, config(Exchange.BINANCEUSDM, sim))
    try:
        with pytest.raises(StreamLost) as lost:
            await stream.start(timeout=10)
    finally:
        await stream.close()
    throttle = lost.value.throttle
    assert throttle is not None and throttle.seconds >= 1 and throttle.ip_wide  # Binance's weight is the IP's


def test_the_reported_positions_are_each_kept_once_and_bounded() -> None:
    from activities.streams import remember

    reported: list[int] = []
    for pid in (1, 2, 1, 3):  # 1 was told again (a re-tell): once, moved to the end
        reported = remember(reported, pid, keep=3)
    assert reported == [2, 1, 3]
    assert remember(reported, 4, keep=3) == [1, 3, 4]  # the oldest goes
    assert remember(reported, 3, keep=3) == [2, 1, 3]


def test_a_throttling_answer_says_how_long_and_whose() -> None:
    """One rule for the gateway's calls and the stream's connects (`throttle_of`): how long (the
    venue's headers, or Binance's "banned until"), and whether the limit is the IP's."""
    from ccxt.base.errors import DDoSProtection, ExchangeError, RateLimitExceeded

    now_ms = 1_796_150_000_000
    banned = DDoSProtection(
        'binanceusdm 418 {"code":-1003,"msg":"Way too many requests; IP(127.0.0.1) banned until 1796150240000."}'
    )
    binance, bybit = Exchange.BINANCEUSDM, Exchange.BYBIT
    assert throttle_of(binance, banned, 418, {}, now_ms) == Throttle(240, True)
    weight = RateLimitExceeded('binanceusdm {"code":-1003,"msg":"Too many requests"}')
    assert throttle_of(binance, weight, 429, {}, now_ms) == Throttle(30, True)  # the 429 default, the IP's
    orders = RateLimitExceeded('binanceusdm {"code":-1015,"msg":"Too many new orders"}')
    assert throttle_of(binance, orders, 429, {"Retry-After": "7"}, now_ms) == Throttle(7, False)  # the account's
    reset = {"X-Bapi-Limit-Reset-Timestamp": str(now_ms + 2000)}
    too_many = RateLimitExceeded('bybit {"retCode":10006,"retMsg":"Too many visits!"}')
    assert throttle_of(bybit, too_many, 200, reset, now_ms) == Throttle(2, False)  # per UID
    assert throttle_of(bybit, DDoSProtection("bybit GET /v5/position/list 403 Forbidden"), 403, {}, now_ms).ip_wide
    assert throttle_of(binance, ExchangeError("binanceusdm -2015 Invalid API-key"), 401, {}, now_ms) is None


# ---------------------------------------------------------------- Egis follows the stream
@pytest_asyncio.fixture
async def h(temporal_env: WorkflowEnvironment, deps: Deps) -> AsyncIterator[Harness]:
    async with harness(temporal_env.client, deps) as built:
        yield built


async def follow(h: Harness, exchange: Exchange) -> WorkflowHandle:  # type: ignore[type-arg]
    """Start the account's stream workflow (the worker does this at discovery; the harness does not)."""
    account = ACCOUNTS[exchange.value]
    workflow_id = stream_workflow_id(h.queue, exchange, account)
    h.started.append(workflow_id)
    handle = await h.temporal.start_workflow(
        "AccountStreamWorkflow",
        AccountInput(exchange=exchange, account=account),
        id=workflow_id,
        task_queue=h.queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    assert await eventually(lambda: _connected(h, exchange), timeout=20)
    return handle


async def _connected(h: Harness, exchange: Exchange) -> bool:
    async with h.deps.engine.connect() as conn:
        row = (
            await conn.execute(
                select(stream_status.c.connected).where(
                    stream_status.c.exchange == exchange.value, stream_status.c.account == ACCOUNTS[exchange.value]
                )
            )
        ).scalar_one_or_none()
    return bool(row)


async def _closed(h: Harness, position_id: int) -> dict | None:  # type: ignore[type-arg]
    row = await h.deps.store.get_position(position_id)
    return row if row["status"] == "closed" else None


@pytest.mark.parametrize("exchange", LIVE)
async def test_a_position_closed_on_the_exchange_is_closed_within_a_second(
    h: Harness, sim_control: SimulatorControl, exchange: Exchange
) -> None:
    """No REST sync runs here: only the stream can tell. Exchange-side close -> closed_on_exchange."""
    bot = await h.bot(exchange)
    view = await h.open(bot)
    await follow(h, exchange)
    ghosts = counter(metrics.GHOST_POSITIONS, exchange=exchange.value)
    started = time.monotonic()
    await sim_control.close_position(SIM_KEYS[exchange.value][0], "BTCUSDT", price="61000")
    row = await eventually(lambda: _closed(h, view.position_id), timeout=10, interval=0.02)
    elapsed = time.monotonic() - started
    assert row is not None and row["exit_reason"] == "closed_on_exchange" and row["exit_price"] == D(61000)
    assert elapsed < 2.0, f"stream detection took {elapsed:.2f}s"
    assert counter(metrics.GHOST_POSITIONS, exchange=exchange.value) == ghosts + 1
    async with h.deps.engine.connect() as conn:
        status = (await conn.execute(select(stream_status))).mappings().one()
    assert status["connected"] and status["events"] >= 1 and view.position_id in status["reported"]


async def test_a_partial_close_on_the_exchange_is_recorded_from_the_stream(
    h: Harness, sim_control: SimulatorControl
) -> None:
    bot = await h.bot(Exchange.BYBIT)
    view = await h.open(bot, symbol="ETHUSDT", usd="150")  # 0.05 ETH
    await follow(h, Exchange.BYBIT)
    await sim_control.reduce_position(SIM_KEYS["bybit"][0], "ETHUSDT", "0.02")

    async def adjusted() -> bool:
        row = await h.deps.store.get_position(view.position_id)
        return row["quantity"] - row["closed_quantity"] == D("0.03")

    assert await eventually(adjusted, timeout=10, interval=0.05)


async def test_our_own_fill_is_recorded_from_the_stream_when_the_answer_says_nothing_filled(
    h: Harness, sim_control: SimulatorControl
) -> None:
    """Binance answers the MARKET order NEW / 0 (a setting); the order activity would look it up
    again a second later, but the stream's ORDER_TRADE_UPDATE records the fill first."""
    await follow(h, Exchange.BINANCEUSDM)
    await sim_control.settings(binance_market_new_answer=True)
    bot = await h.bot(Exchange.BINANCEUSDM)
    view = await h.open(bot)
    assert view.status == "open" and view.quantity == D("0.002")
    async with h.deps.engine.connect() as conn:
        actors = (
            (
                await conn.execute(
                    select(audit_events.c.actor).where(
                        audit_events.c.entity_id == str(view.position_id), audit_events.c.action == "open_fill"
                    )
                )
            )
            .scalars()
            .all()
        )
    assert actors == ["stream:binanceusdm/sim-binance"]


@pytest.mark.parametrize("fault", ["drop", "silence", "skip"])
async def test_events_missed_by_the_stream_are_found_by_its_rest_read(
    h: Harness, sim_control: SimulatorControl, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """The venues replay nothing: after a reconnect (the socket was dropped), on silence (the
    watchdog), or when an event was lost, the REST read finds the ghost anyway."""
    monkeypatch.setattr(stream_activity, "WATCHDOG_SECONDS", 1.0)
    monkeypatch.setattr(stream_activity, "SILENCE_RECONNECT_SECONDS", 3.0)
    exchange = Exchange.BYBIT
    key = SIM_KEYS["bybit"][0]
    bot = await h.bot(exchange)
    view = await h.open(bot)
    await follow(h, exchange)
    findings = counter(metrics.STREAM_GAP_FILL_FINDINGS, exchange="bybit", account=ACCOUNTS["bybit"])
    if fault == "drop":
        await sim_control.drop_streams("bybit", key)
    elif fault == "silence":
        await sim_control.silence_streams("bybit", key, seconds=30)
    else:
        await sim_control.skip_stream_events("bybit", key, 10)
    await sim_control.close_position(key, "BTCUSDT")
    row = await eventually(lambda: _closed(h, view.position_id), timeout=20, interval=0.1)
    assert row is not None and row["exit_reason"] == "closed_on_exchange"
    if fault != "drop":  # after a drop the reconnect may come back before the close: then the event is seen
        assert counter(metrics.STREAM_GAP_FILL_FINDINGS, exchange="bybit", account=ACCOUNTS["bybit"]) > findings


async def test_a_manual_close_still_works_and_the_stream_stays_out_of_its_way(
    h: Harness, sim_control: SimulatorControl
) -> None:
    """Our own close makes the account flat: the stream must not call that a ghost (the position
    is `closing`, not `open`)."""
    bot = await h.bot(Exchange.BINANCEUSDM)
    view = await h.open(bot)
    await follow(h, Exchange.BINANCEUSDM)
    result = await h.client.close_position(view.workflow_id, CloseRequest(reason="manual"))
    assert result is not None and result.status == "closed" and result.exit_reason == "manual"
    assert result.orders_sent == 1


async def test_a_ghost_hint_not_taken_is_told_again_until_the_position_is_final(
    h: Harness, sim_control: SimulatorControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hint that reaches a position workflow still settling its open is not taken, and the venue
    sends no second event: the stream tells the ghost again while the position stays open, and
    stops once it is final. (Here the first hints go to a workflow id that does not exist, so
    none is taken.)"""
    monkeypatch.setattr(stream_activity, "RETELL_SECONDS", 600.0)  # time passes only when the test says so
    bot = await h.bot(Exchange.BYBIT)
    view = await h.open(bot)
    acts = stream_activity.StreamActivities(h.deps)
    run = stream_activity._Run(Exchange.BYBIT, ACCOUNTS["bybit"])
    pid = view.position_id
    lost = OurPosition(pid, "pos-nobody-listens-x", "BTCUSDT", "long", "open", D("0.002"), None)
    await acts._tell(run, lost, SyncHint(kind="ghost"))
    await acts._retell(run)  # too soon: nothing
    assert run.unconfirmed[pid].retold == 0
    run.unconfirmed[pid].told_at -= 601  # RETELL_SECONDS later
    await acts._retell(run)  # still open in the database: told again
    assert run.unconfirmed[pid].retold == 1
    result = await h.client.close_position(view.workflow_id, CloseRequest(reason="manual"))
    assert result is not None and result.status == "closed"
    run.unconfirmed[pid].told_at -= 601
    await acts._retell(run)  # final: forgotten
    assert pid not in run.unconfirmed


async def test_the_stream_and_the_gateway_share_one_back_off_per_account(h: Harness) -> None:
    """A throttled connect imposes the account's back-off: the REST calls of the same process must
    see it at once (and the stream must see theirs), not after the shared row's next read."""
    acts = stream_activity.StreamActivities(h.deps)
    run = stream_activity._Run(Exchange.BINANCEUSDM, ACCOUNTS["binanceusdm"])
    gateway = await h.deps.gateways.get(run.exchange, run.account)
    assert await acts._backoff(run) is gateway.backoff  # type: ignore[attr-defined]
