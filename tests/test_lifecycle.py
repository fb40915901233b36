"""PositionWorkflow on a real Temporal dev server, real PostgreSQL, real ccxt against the simulators."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from decimal import Decimal

import ccxt.async_support as ccxt_async
import pytest
import pytest_asyncio
from sqlalchemy import func, select
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from activities.deps import Deps
from egis import metrics
from egis.client import EgisClient
from egis.db.schema import orders, paper_positions, positions
from egis.errors import (
    BudgetExceeded,
    InvalidInput,
    InvalidTransition,
    PositionAlreadyOpen,
    QuantityRejected,
    StackError,
    UnknownSymbol,
    UntrackedExchangePosition,
)
from egis.exchanges.local import point_to_local
from egis.models import (
    CloseOutcomeKind,
    CloseRequest,
    Exchange,
    OpenPositionInput,
    PositionResult,
    position_workflow_id,
)
from egis.simulator.control import SimulatorControl
from tests.conftest import SIM_KEYS
from tests.lifecycle import Harness, counter, eventually, harness, keep_history

D = Decimal


@pytest_asyncio.fixture
async def h(temporal_env: WorkflowEnvironment, deps: Deps) -> AsyncIterator[Harness]:
    async with harness(temporal_env.client, deps) as built:
        yield built


async def db_positions(h: Harness) -> list[dict]:  # type: ignore[type-arg]
    async with h.deps.engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(select(positions).order_by(positions.c.id))).mappings()]


async def test_open_then_manual_close_by_update(h: Harness) -> None:
    bot = await h.bot(Exchange.BINANCEUSDM)
    view = await h.open(bot)
    assert view.status == "open" and view.quantity == D("0.002") and view.entry_price == D("60000")
    assert (await h.client.budget(bot)).available_usd == D("880.00")
    result = await h.client.close_position(view.workflow_id, CloseRequest(reason="manual"))
    assert result is not None and result.outcome is CloseOutcomeKind.CLOSED and result.status == "closed"
    assert result.orders_sent == 1 and result.exit_reason == "manual"
    (row,) = await db_positions(h)
    assert row["status"] == "closed" and row["exit_reason"] == "manual" and row["realized_pnl"] == D(0)
    assert (await h.client.budget(bot)).available_usd == D("1000.00")

    # the position is closed: another close is rejected and changes nothing
    before = await db_positions(h)
    with pytest.raises(InvalidTransition, match=r"nothing to close|already closed"):
        await h.client.close_position(view.workflow_id, CloseRequest(reason="again"))
    assert await db_positions(h) == before
    await keep_history(h.temporal, view.workflow_id, "open_close_by_update_binance")


async def test_manual_close_by_signal(h: Harness, sim_control: SimulatorControl) -> None:
    bot = await h.bot(Exchange.BYBIT)
    view = await h.open(bot)
    assert await h.client.close_position(view.workflow_id, CloseRequest(reason="operator"), wait=False) is None
    result = await h.temporal.get_workflow_handle(view.workflow_id, result_type=PositionResult).result()
    assert result.status == "closed" and result.exit_reason == "operator"
    assert await sim_control.positions(SIM_KEYS["bybit"][0]) == []
    await keep_history(h.temporal, view.workflow_id, "close_by_signal_bybit")


async def test_update_on_a_closing_position_is_rejected(h: Harness, sim_control: SimulatorControl) -> None:
    bot = await h.bot(Exchange.BINANCEUSDM)
    view = await h.open(bot)
    # slow the close down: the exchange accepts it but the answer takes 3 s (the client gives up at 1.5 s)
    await sim_control.add_fault(
        "POST /fapi/v1/order", "accept_then_timeout", seconds=3, api_key=SIM_KEYS["binanceusdm"][0]
    )
    first = asyncio.create_task(h.client.close_position(view.workflow_id, CloseRequest(reason="first")))
    await eventually(lambda: h.client.position_state(view.workflow_id), timeout=10)
    await eventually(lambda: _status_is(h, view.workflow_id, "closing"), timeout=10, interval=0.05)
    with pytest.raises(InvalidTransition, match="already closing"):
        await h.client.close_position(view.workflow_id, CloseRequest(reason="second"))
    result = await first
    assert result is not None and result.status == "closed" and result.exit_reason == "first"
    accepted = [o for o in await sim_control.orders(SIM_KEYS["binanceusdm"][0]) if o["outcome"] == "accepted"]
    assert len(accepted) == 2  # one open, one close: the timed-out close was looked up, not re-sent


async def _status_is(h: Harness, workflow_id: str, status: str) -> bool:
    return (await h.client.position_state(workflow_id)).status == status


async def test_seed_000_closing_a_long_never_leaves_a_short(h: Harness, sim_control: SimulatorControl) -> None:
    bot = await h.bot(Exchange.BINANCEUSDM)
    view = await h.open(bot)
    await h.client.close_position(view.workflow_id, CloseRequest(reason="manual"))
    rows = await db_positions(h)
    assert [(r["side"], r["status"]) for r in rows] == [("long", "closed")]
    async with h.deps.engine.connect() as conn:
        sent = (
            await conn.execute(select(orders.c.intent, orders.c.side, orders.c.reduce_only).order_by(orders.c.id))
        ).all()
    assert [tuple(o) for o in sent] == [("open", "buy", False), ("close", "sell", True)]
    assert await sim_control.positions(SIM_KEYS["binanceusdm"][0]) == []  # no short on the exchange either


async def test_duplicate_start_with_the_same_reference_is_refused_and_creates_nothing(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    bot = await h.bot(Exchange.PAPER)
    request = OpenPositionInput(bot=bot, symbol="BTCUSDT", side="long", usd=D("120"), ref="same-ref")
    await h.client.open_position(request)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        with pytest.raises(PositionAlreadyOpen, match="already started"):
            await h.client.open_position(request)
        gc.collect()  # an unread failed future says so when it is collected
    assert "never retrieved" not in caplog.text  # the refusal alone, no traceback after it
    assert len(await db_positions(h)) == 1


async def test_an_open_no_worker_takes_answers_opening_when_its_wait_ends(h: Harness) -> None:
    """`egis open --wait N` with no worker on the queue: after N seconds the answer is the started
    position, still `opening` (nothing written), not an error about the update's RPC."""
    bot = await h.bot(Exchange.PAPER)
    idle = EgisClient(
        h.client.settings.model_copy(update={"task_queue": "nobody-polls-this"}), h.deps.engine, h.temporal
    )
    request = OpenPositionInput(bot=bot, symbol="BTCUSDT", side="long", usd=D("120"), ref="no-worker")
    h.started.append(position_workflow_id(bot, request.ref))
    started = asyncio.get_running_loop().time()
    view = await idle.open_position(request, wait=2)
    elapsed = asyncio.get_running_loop().time() - started
    assert view.status == "opening" and view.workflow_id == position_workflow_id(bot, request.ref)
    assert 1.5 <= elapsed < 20
    assert (await h.temporal.get_workflow_handle(view.workflow_id).describe()).status == WorkflowExecutionStatus.RUNNING
    assert await db_positions(h) == []
    with pytest.raises(PositionAlreadyOpen):  # the ref is taken: a retry never starts a second one
        await idle.open_position(request, wait=2)


async def test_a_close_no_worker_takes_answers_when_its_wait_ends(h: Harness) -> None:
    """`egis close --timeout N` waits N seconds, not for ever: with no worker to take the request
    the answer is the typed StackError that says the close may be under way (the request stays
    with the workflow), and nothing was written."""
    bot = await h.bot(Exchange.PAPER)
    idle = EgisClient(
        h.client.settings.model_copy(update={"task_queue": "nobody-polls-this"}), h.deps.engine, h.temporal
    )
    request = OpenPositionInput(bot=bot, symbol="BTCUSDT", side="long", usd=D("120"), ref="no-worker-close")
    h.started.append(position_workflow_id(bot, request.ref))
    view = await idle.open_position(request, wait=None)
    started = asyncio.get_running_loop().time()
    with pytest.raises(StackError, match="did not answer the close"):
        await idle.close_position(view.workflow_id, CloseRequest(reason="manual"), timeout=2)
    assert 1.5 <= asyncio.get_running_loop().time() - started < 20
    with pytest.raises(InvalidInput, match="close timeout"):
        await idle.close_position(view.workflow_id, CloseRequest(reason="manual"), timeout=0)
    assert await db_positions(h) == []


@pytest.mark.parametrize(
    ("usd", "symbol", "error"),
    [("5000", "BTCUSDT", BudgetExceeded), ("10", "BTCUSDT", QuantityRejected), ("100", "NOPEUSDT", UnknownSymbol)],
)
async def test_refused_opens_write_nothing(h: Harness, usd: str, symbol: str, error: type[Exception]) -> None:
    bot = await h.bot(Exchange.BYBIT, budget="1000")
    with pytest.raises(error):
        await h.open(bot, symbol=symbol, usd=usd)
    assert await db_positions(h) == []


async def test_permanent_close_error_waits_for_an_operator(h: Harness, sim_control: SimulatorControl) -> None:
    """A PERMANENT refusal is not retried in a loop: one order, the position stays open with the
    error, and a later close request (the operator's) works."""
    bot = await h.bot(Exchange.BINANCEUSDM)
    view = await h.open(bot)
    key = SIM_KEYS["binanceusdm"][0]
    await sim_control.add_fault(
        "POST /fapi/v1/order",
        "error",
        http_status=401,
        code=-2015,
        msg="Invalid API-key, IP, or permissions",
        api_key=key,
    )
    result = await h.client.close_position(view.workflow_id, CloseRequest(reason="manual"))
    assert result is not None and result.outcome is CloseOutcomeKind.FAILED and result.status == "open"
    assert "credentials rejected" in (result.error_message or "")
    (row,) = await db_positions(h)
    assert row["status"] == "open" and "credentials rejected" in row["last_error"]
    await asyncio.sleep(2)  # nothing retries behind our back
    sent = [
        r
        for r in await sim_control.requests()
        if r["path"] == "/fapi/v1/order" and r["body"].get("reduceOnly") == "true"
    ]
    assert len(sent) == 1  # the faulted request never reached the order book, but it was sent once
    state = await h.client.position_state(view.workflow_id)
    assert state.status == "open" and state.last_error
    retry = await h.client.close_position(view.workflow_id, CloseRequest(reason="operator_retry"))
    assert retry is not None and retry.status == "closed" and retry.exit_reason == "operator_retry"
    await keep_history(h.temporal, view.workflow_id, "permanent_close_error_then_operator_retry")


async def test_seed_003_case_1_ghost_manual_close_sends_nothing(h: Harness, sim_control: SimulatorControl) -> None:
    bot = await h.bot(Exchange.BYBIT)
    view = await h.open(bot, symbol="CLOUDUSDT", usd="6")  # 46 CLOUD at 0.13012, as in seed 003
    key = SIM_KEYS["bybit"][0]
    await sim_control.close_position(key, "CLOUDUSDT", price="0.1324")  # a stop-loss hit on the exchange
    ghosts = counter(metrics.GHOST_POSITIONS, exchange="bybit")
    result = await h.client.close_position(view.workflow_id, CloseRequest(reason="aged_grace"))
    assert result is not None and result.outcome is CloseOutcomeKind.GHOST and result.orders_sent == 0
    assert result.exit_reason == "closed_on_exchange" and result.exit_price == D("0.1324")
    assert result.realized_pnl == (D("0.1324") - D("0.13012")) * 46
    assert [o for o in await sim_control.orders(key) if o["reduce_only"]] == []  # zero close orders
    assert counter(metrics.GHOST_POSITIONS, exchange="bybit") == ghosts + 1
    await keep_history(h.temporal, view.workflow_id, "ghost_manual_close_bybit")


async def test_seed_003_case_2_quantity_mismatch_closes_the_exchange_quantity(
    h: Harness, sim_control: SimulatorControl
) -> None:
    bot = await h.bot(Exchange.BYBIT)
    view = await h.open(bot, symbol="CLOUDUSDT", usd="6")  # 46
    key = SIM_KEYS["bybit"][0]
    await sim_control.reduce_position(key, "CLOUDUSDT", "10")  # a partial manual close in the exchange UI
    mismatches = counter(metrics.CLOSE_QUANTITY_MISMATCHES, exchange="bybit")
    result = await h.client.close_position(view.workflow_id, CloseRequest(reason="manual"))
    assert result is not None and result.status == "closed" and result.orders_sent == 1
    (close_order,) = [o for o in await sim_control.orders(key) if o["reduce_only"]]
    assert close_order["quantity"] == D("36") and close_order["outcome"] == "accepted"
    assert counter(metrics.CLOSE_QUANTITY_MISMATCHES, exchange="bybit") == mismatches + 1
    (row,) = await db_positions(h)
    assert row["quantity"] == D("36") and row["status"] == "closed"


@pytest.mark.parametrize("exchange", [Exchange.BINANCEUSDM, Exchange.BYBIT])
async def test_a_remainder_below_the_minimum_order_size_is_closed_reduce_only(
    exchange: Exchange, h: Harness, sim_control: SimulatorControl
) -> None:
    """Found by the long chaos run: SOLUSDT (step 0.1, minimum 1) opened 1.8, halved on the
    exchange to 0.9; the close of 0.9 was refused locally as "below the minimum" and the
    position was left `closing` with a pending order that was never sent."""
    bot = await h.bot(exchange)
    view = await h.open(bot, symbol="SOLUSDT", usd="270")  # 1.8 SOL at 150
    assert view.quantity == D("1.8")
    key = SIM_KEYS[exchange.value][0]
    await sim_control.reduce_position(key, "SOLUSDT", "0.9")  # a partial stop on the exchange
    result = await h.client.close_position(view.workflow_id, CloseRequest(reason="manual"))
    assert result is not None and result.status == "closed" and result.orders_sent == 1
    (close_order,) = [o for o in await sim_control.orders(key) if o["reduce_only"]]
    # Binance exempts reduce-only orders from its minimums; Bybit's closing orders keep the minimum
    # size, and its documented way out is qty 0 + reduceOnly + closeOnTrigger (the whole position)
    sent = D("0.9") if exchange is Exchange.BINANCEUSDM else D("0")
    assert close_order["quantity"] == sent and close_order["outcome"] == "accepted"
    assert await sim_control.positions(key) == []
    (row,) = await db_positions(h)
    assert row["status"] == "closed" and row["quantity"] == D("0.9") and row["closed_quantity"] == D("0.9")


async def test_a_close_activity_that_fails_for_good_reopens_the_position_in_the_db(
    h: Harness, sim_control: SimulatorControl
) -> None:
    """The pre-close read is refused for good (revoked key): the activity fails non-retryably.
    The database must say what the workflow says (open, with the error), not `closing`."""
    bot = await h.bot(Exchange.BINANCEUSDM)
    view = await h.open(bot)
    key = SIM_KEYS["binanceusdm"][0]
    for route in ("GET /fapi/v2/positionRisk", "GET /fapi/v3/positionRisk"):
        await sim_control.add_fault(
            route, "error", http_status=401, code=-2015, msg="Invalid API-key, IP, or permissions", api_key=key
        )
    result = await h.client.close_position(view.workflow_id, CloseRequest(reason="manual"))
    assert result is not None and result.outcome is CloseOutcomeKind.FAILED and result.status == "open"
    (row,) = await db_positions(h)
    assert row["status"] == "open" and "credentials rejected" in (row["last_error"] or "")
    async with h.deps.engine.connect() as conn:
        pending = (await conn.execute(select(orders).where(orders.c.status == "pending"))).mappings().all()
    assert [dict(o) for o in pending] == []  # no close order is left pending; none was sent
    assert not [o for o in await sim_control.orders(key) if o["reduce_only"]]
    await sim_control.clear_faults()
    retry = await h.client.close_position(view.workflow_id, CloseRequest(reason="operator_retry"))
    assert retry is not None and retry.status == "closed"
    await keep_history(h.temporal, view.workflow_id, "close_activity_failed_then_operator_retry")


async def test_seed_003_case_4_read_failure_falls_back_to_the_db_quantity(
    h: Harness, sim_control: SimulatorControl
) -> None:
    bot = await h.bot(Exchange.BYBIT)
    view = await h.open(bot)
    key = SIM_KEYS["bybit"][0]
    await sim_control.add_fault(
        "GET /v5/position/list", "http", http_status=503, body="Service Unavailable.", api_key=key
    )
    failures = counter(metrics.CLOSE_VALIDATION_FAILURES, exchange="bybit")
    result = await h.client.close_position(view.workflow_id, CloseRequest(reason="manual"))
    assert result is not None and result.status == "closed" and result.orders_sent == 1
    assert counter(metrics.CLOSE_VALIDATION_FAILURES, exchange="bybit") == failures + 1


async def test_verify_after_170131_finds_the_position_gone(h: Harness, sim_control: SimulatorControl) -> None:
    """The pre-close read fails, the close goes out, Bybit answers 170131: read again, it is gone:
    POSITION_NOT_FOUND, closed_on_exchange, never retried."""
    bot = await h.bot(Exchange.BYBIT)
    view = await h.open(bot)
    key = SIM_KEYS["bybit"][0]
    await sim_control.settings(bybit_reduce_only_code=170131)  # as seed 003's bot saw it (the default is 110017)
    await sim_control.close_position(key, "BTCUSDT", price="61000")
    await sim_control.add_fault(
        "GET /v5/position/list", "http", http_status=503, body="Service Unavailable.", api_key=key
    )
    not_found = counter(metrics.CLOSE_POSITION_NOT_FOUND, exchange="bybit")
    result = await h.client.close_position(view.workflow_id, CloseRequest(reason="manual"))
    assert result is not None and result.outcome is CloseOutcomeKind.POSITION_NOT_FOUND
    assert result.status == "closed" and result.exit_reason == "closed_on_exchange" and result.exit_price == D("61000")
    rejected = [o for o in await sim_control.orders(key) if o["reduce_only"]]
    assert [(o["outcome"], o["error_code"]) for o in rejected] == [("rejected", 170131)]
    assert counter(metrics.CLOSE_POSITION_NOT_FOUND, exchange="bybit") == not_found + 1
    await keep_history(h.temporal, view.workflow_id, "verify_170131_position_not_found")


async def test_search_attributes_find_exactly_the_expected_workflows(h: Harness) -> None:
    alpha, beta = await h.bot(Exchange.PAPER), await h.bot(Exchange.BYBIT)
    a1 = await h.open(alpha)
    a2 = await h.open(alpha, symbol="ETHUSDT")
    b1 = await h.open(beta)
    await h.client.close_position(a2.workflow_id, CloseRequest(reason="manual"))

    async def ids(query: str) -> set[str]:
        return {w.id async for w in h.temporal.list_workflows(query)}

    open_alpha = f'BotId = "{alpha}" AND PositionStatus = "open"'
    assert await eventually(lambda: _equals(ids(open_alpha), {a1.workflow_id}))
    assert await eventually(lambda: _equals(ids(f'BotId = "{alpha}" AND PositionStatus = "closed"'), {a2.workflow_id}))
    assert await eventually(
        lambda: _equals(ids(f'Exchange = "bybit" AND BotId = "{beta}" AND PositionSide = "long"'), {b1.workflow_id})
    )
    description = await h.temporal.get_workflow_handle(a2.workflow_id).describe()
    summary = await description.memo_value("summary")
    assert "ETHUSDT" in summary and "closed" in summary


async def _equals(coro, expected: set[str]) -> bool:  # type: ignore[no-untyped-def]
    return await coro == expected


async def test_a_failing_open_releases_the_budget(h: Harness, sim_control: SimulatorControl) -> None:
    bot = await h.bot(Exchange.BINANCEUSDM)
    await sim_control.add_fault(
        "POST /fapi/v1/order", "error", code=-2019, msg="Margin is insufficient.", api_key=SIM_KEYS["binanceusdm"][0]
    )
    view = await h.open(bot)
    assert view.status == "failed" and "margin" in (view.last_error or "")
    (row,) = await db_positions(h)
    assert row["status"] == "failed" and row["exit_reason"] == "open_failed"
    assert (await h.client.budget(bot)).available_usd == D("1000.00")
    async with h.deps.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(orders))).scalar_one() == 1
    await keep_history(h.temporal, view.workflow_id, "open_refused_by_exchange")


async def test_workflow_input_that_fails_validation_fails_the_workflow(h: Harness) -> None:
    """Started by hand (web UI / temporal CLI) with a bad payload: a clear failure, no row."""
    handle = await h.temporal.start_workflow(
        "PositionWorkflow",
        {"request": {"bot": "x", "symbol": "not a symbol", "side": "long", "usd": "10", "ref": "r"}},
        id="pos-x-bad-input-test",
        task_queue=h.queue,
    )
    with pytest.raises(WorkflowFailureError) as info:
        await handle.result()
    assert "invalid symbol" in str(info.value.cause)
    assert await db_positions(h) == []


async def test_invariants_hold_after_mixed_lifecycles(h: Harness, sim_control: SimulatorControl) -> None:
    """The chaos suite's invariant checker, on an undisturbed run: it must find nothing."""

    for exchange, symbol in (
        (Exchange.BINANCEUSDM, "BTCUSDT"),
        (Exchange.BYBIT, "ETHUSDT"),
        (Exchange.PAPER, "SOLUSDT"),
    ):
        bot = await h.bot(exchange)
        view = await h.open(bot, symbol=symbol, usd="300")
        if exchange is Exchange.BYBIT:
            await sim_control.close_position(SIM_KEYS["bybit"][0], symbol)  # a ghost
        await h.client.close_position(view.workflow_id, CloseRequest(reason="manual"))
    keys = {"sim-binance": SIM_KEYS["binanceusdm"][0], "sim-bybit": SIM_KEYS["bybit"][0]}
    assert await eventually(lambda: _no_violations(h, sim_control, keys), timeout=20)


async def _no_violations(h: Harness, sim_control: SimulatorControl, keys: dict[str, str]) -> bool:
    from chaos import invariants

    return await invariants.check(h.deps.engine, sim_control, keys, h.temporal, h.queue) == []


async def _orphan_on_the_exchange(sim_control: SimulatorControl, exchange: str, symbol: str, side: str) -> str:
    """Someone trades the account by hand: a position Egis does not know."""
    key, secret = SIM_KEYS[exchange]
    cls = ccxt_async.binanceusdm if exchange == "binanceusdm" else ccxt_async.bybit
    ex = point_to_local(cls({"apiKey": key, "secret": secret, "enableRateLimit": False}), sim_control.base_url)
    try:
        await ex.load_markets()
        ccxt_symbol = f"{symbol.removesuffix('USDT')}/USDT:USDT"
        await ex.create_order(ccxt_symbol, "market", side, "0.002", None, {"clientOrderId": "by-hand-1"})
    finally:
        await ex.close()
    return key


@pytest.mark.parametrize("exchange", [Exchange.BINANCEUSDM, Exchange.BYBIT])
async def test_an_open_never_nets_against_a_position_egis_does_not_know(
    h: Harness, sim_control: SimulatorControl, exchange: Exchange
) -> None:
    """Issue 11: the exchange holds BTCUSDT -0.002 that Egis does not track; an open long there
    would net it to 0 while the database said "long open". Refused before anything is written or
    sent; another symbol is fine."""
    key = await _orphan_on_the_exchange(sim_control, exchange.value, "BTCUSDT", "sell")
    bot = await h.bot(exchange)
    with pytest.raises(UntrackedExchangePosition) as refused:
        await h.open(bot, symbol="BTCUSDT", side="long")
    message = str(refused.value)
    assert "short BTCUSDT position of 0.002" in message and "egis sync" in message and "\n" not in message
    assert await db_positions(h) == []
    assert [o["client_order_id"] for o in await sim_control.orders(key)] == ["by-hand-1"]  # nothing sent
    view = await h.open(bot, symbol="ETHUSDT", side="long")
    assert view.status == "open"


async def test_a_paper_open_checks_paper_positions_too(h: Harness) -> None:
    bot = await h.bot(Exchange.PAPER)
    async with h.deps.engine.begin() as conn:  # a paper position nobody tracks (a legacy row)
        await conn.execute(
            paper_positions.insert().values(
                account="paper-1", symbol="BTCUSDT", side="short", status="open", quantity=D(1), entry_price=D(60000)
            )
        )
    with pytest.raises(UntrackedExchangePosition, match="paper/paper-1 holds a short BTCUSDT position of 1"):
        await h.open(bot, symbol="BTCUSDT")
    assert await db_positions(h) == []


async def test_170131_after_failed_reads_leaves_no_pending_order_and_counts_the_send(
    h: Harness, sim_control: SimulatorControl
) -> None:
    """Issue 11: the position reads fail twice, the close goes out, Bybit answers 170131, then the
    position is found gone: closed_on_exchange, its close order rejected with the code (not
    pending), and orders_sent says 1 because one request reached the exchange."""
    bot = await h.bot(Exchange.BYBIT)
    view = await h.open(bot)
    key = SIM_KEYS["bybit"][0]
    await sim_control.settings(bybit_reduce_only_code=170131)  # as seed 003 saw it
    await sim_control.close_position(key, "BTCUSDT", price="61000")
    await sim_control.add_fault(
        "GET /v5/position/list", "http", 2, http_status=503, body="Service Unavailable.", api_key=key
    )
    result = await h.client.close_position(view.workflow_id, CloseRequest(reason="manual"))
    assert result is not None and result.status == "closed" and result.exit_reason == "closed_on_exchange"
    assert result.orders_sent == 1
    async with h.deps.engine.connect() as conn:
        rows = (await conn.execute(select(orders).where(orders.c.position_id == view.position_id))).mappings().all()
    closes = [r for r in rows if r["intent"] == "close"]
    assert [(r["status"], r["submissions"], r["error_code"]) for r in closes] == [("rejected", 1, "170131")]
    assert [r for r in rows if r["status"] == "pending"] == []


async def test_an_oversize_close_reason_is_refused_by_the_update_and_ignored_by_the_signal(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 11: every string that crosses a boundary has a maximum. A megabyte of reason is
    refused by the update's validation with a clear error, ignored by the signal, and no log line
    repeats more than a short excerpt of it."""
    bot = await h.bot(Exchange.PAPER)
    view = await h.open(bot)
    huge = "x" * 1_000_000
    handle = h.temporal.get_workflow_handle(view.workflow_id)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update("request_close", {"reason": huge})
    assert "reason too long: 1000000 characters, at most 64" in str(refused.value.cause)
    caplog.clear()
    await handle.signal("close", {"reason": huge})
    await asyncio.sleep(1.5)  # the worker has processed (and dropped) the signal
    assert max((len(r.getMessage()) + len(r.exc_text or "") for r in caplog.records), default=0) < 4000
    assert (await h.client.position_state(view.workflow_id)).status == "open"
    result = await h.client.close_position(view.workflow_id, CloseRequest(reason="manual"))
    assert result is not None and result.status == "closed"
