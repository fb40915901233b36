"""`egis selftest` against the simulators: real ccxt, real PostgreSQL, the gateway Egis uses.

In the simulators' faithful default mode every row holds; with a behaviour switched to the other case
(Binance refusing a reused id, Bybit 170131, hedge mode, no rate-limit headers, NEW / 0 answers, a
skewed clock, a lagging look-up, Bybit holding closing orders to the minimum notional) the matching row
says "differs" and names what Egis does; a failure in the middle still leaves the account flat; a live
account without the flag, or an account holding positions Egis does not know, is refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from egis.db.schema import bots, maintenance_runs, positions
from egis.exchanges.accounts import AccountConfig, write_account
from egis.models import Exchange
from egis.selftest import (
    CHECKS,
    DIFFERS,
    HOLDS,
    UNCHECKED,
    SelftestRefused,
    SelftestReport,
    judge,
    run_selftest,
)
from egis.simulator.control import SimulatorControl
from egis.simulator.server import SimulatorServer
from tests.conftest import ACCOUNTS, SIM_KEYS

D = Decimal
BN, BY = Exchange.BINANCEUSDM, Exchange.BYBIT
FAITHFUL = [(BN, "BTCUSDT"), (BY, "DOGEUSDT")]
TRADING_SENDS_ORDERS = {
    "open_readback",
    "market_answer",
    "lookup_after_fill",
    "reuse_filled_id",
    "reduce_only_larger",
    "reduce_only_flat",
    "min_refusal",
    "reduce_only_min_exempt",
    "trade_history",
}
"""The checks that place orders (written out here, not read from the product: the test states it)."""
"""Bybit's BTCUSDT minimum size (0.001 = 60 USDT) is worth more than its minimum notional (5), so no
order there can be below the minimum: the two minimum rows are checked on a cheaper market."""


async def selftest(engine: AsyncEngine, accounts_dir: Path, exchange: Exchange, symbol: str = "BTCUSDT", **kw):  # type: ignore[no-untyped-def]
    return await run_selftest(engine, accounts_dir, ACCOUNTS[exchange.value], symbol=symbol, actor="test", **kw)


def rows(report: SelftestReport) -> dict[str, object]:
    return {r.check: r for r in report.rows}


async def held(sim_control: SimulatorControl, exchange: Exchange) -> list[dict]:  # type: ignore[type-arg]
    return await sim_control.positions(SIM_KEYS[exchange.value][0])


# ---------------------------------------------------------------- the faithful venues
@pytest.mark.parametrize(("exchange", "symbol"), FAITHFUL)
async def test_every_row_holds_against_the_faithful_simulators(
    engine: AsyncEngine, accounts_dir: Path, sim_control: SimulatorControl, exchange: Exchange, symbol: str
) -> None:
    report = await selftest(engine, accounts_dir, exchange, symbol)
    by_check = rows(report)
    assert list(by_check) == list(CHECKS)
    assert {c: (r.verdict, r.answer) for c, r in by_check.items() if r.verdict != HOLDS} == {}
    assert report.ok and report.flat and report.stopped is None
    assert await held(sim_control, exchange) == []
    orders = await sim_control.orders(SIM_KEYS[exchange.value][0])
    assert len(orders) == 6  # a fixed, bounded script: 3 refused or capped on purpose, 1 open, 2 reduce-only
    assert all(o["client_order_id"].startswith("egst") for o in orders)
    async with engine.connect() as conn:
        (run,) = (await conn.execute(select(maintenance_runs))).mappings().all()
    assert (run["kind"], run["scope"], run["mode"], run["actor"]) == (
        "selftest",
        f"{exchange.value}/{ACCOUNTS[exchange.value]}",
        "local",
        "test",
    )
    assert run["found"] == {"holds": 16, "differs": 0, "could_not_check": 0, "unhandled": 0, "left_flat": 1}
    assert [r["check"] for r in run["report"]] == list(CHECKS)


async def test_bybit_btcusdt_says_where_the_minimums_can_be_checked(
    engine: AsyncEngine, accounts_dir: Path, sim_control: SimulatorControl
) -> None:
    report = await selftest(engine, accounts_dir, BY, "BTCUSDT")
    unchecked = {r.check: r.answer for r in report.rows if r.verdict != HOLDS}
    assert set(unchecked) == {"min_refusal", "reduce_only_min_exempt"}
    assert all("rerun with --symbol DOGEUSDT" in answer for answer in unchecked.values())
    assert report.ok and await held(sim_control, BY) == []


# ---------------------------------------------------------------- the other behaviours: "differs", and what Egis does
SWITCHED = [
    pytest.param(
        BN,
        "BTCUSDT",
        {"binance_reject_reused_client_id": True},
        "reuse_filled_id",
        "-4116",
        "never sends an order again blind",
        True,
        id="binance-refuses-a-reused-id",
    ),
    pytest.param(
        BY,
        "BTCUSDT",
        {"bybit_reduce_only_code": 170131},
        "reduce_only_flat",
        "170131 Insufficient balance",
        "Egis classifies 170131 on a close as VERIFY (bybit-170131-close) and reads the position",
        True,
        id="bybit-170131",
    ),
    pytest.param(
        BN,
        "BTCUSDT",
        {"rate_limit_headers": False},
        "rate_limit_headers",
        "x-mbx-used-weight-1m, x-mbx-order-count-10s",
        "else by the documented default",
        True,
        id="binance-no-headers",
    ),
    pytest.param(
        BY,
        "BTCUSDT",
        {"rate_limit_headers": False},
        "rate_limit_headers",
        "x-bapi-limit, x-bapi-limit-status, x-bapi-limit-reset-timestamp",
        "X-Bapi-Limit-Reset-Timestamp when a throttling answer carries them",
        True,
        id="bybit-no-headers",
    ),
    pytest.param(
        BN,
        "BTCUSDT",
        {"binance_market_new_answer": True},
        "market_answer",
        "status NEW, executedQty 0",
        "never records a zero fill",
        True,
        id="binance-new-answer",
    ),
    pytest.param(
        BY,
        "BTCUSDT",
        {"clock_offset_ms": 4000},
        "clock",
        "ahead of ours",
        "Egis learns the venue's clock",
        True,
        id="bybit-clock-ahead",
    ),
    pytest.param(
        BY,
        "DOGEUSDT",
        {"bybit_reduce_only_min_notional_exempt": False},
        "reduce_only_min_exempt",
        "110094 Order notional value below the lower limit",
        "not handled: a remainder below the minimum notional cannot be closed",
        False,
        id="bybit-closing-orders-held-to-the-notional",
    ),
]


@pytest.mark.parametrize(("exchange", "symbol", "settings", "check", "answer", "egis_does", "handled"), SWITCHED)
async def test_a_switched_behaviour_is_reported_as_a_difference_with_what_egis_does(
    engine: AsyncEngine,
    accounts_dir: Path,
    sim_control: SimulatorControl,
    exchange: Exchange,
    symbol: str,
    settings: dict[str, object],
    check: str,
    answer: str,
    egis_does: str,
    handled: bool,
) -> None:
    await sim_control.settings(**settings)
    report = await selftest(engine, accounts_dir, exchange, symbol)
    by_check = rows(report)
    row = by_check[check]
    assert (row.verdict, row.handled) == (DIFFERS, handled), row
    assert answer in row.answer and egis_does in row.egis_does
    others = {c: r.verdict for c, r in by_check.items() if c != check and r.verdict == DIFFERS}
    assert others == {}
    assert report.flat and await held(sim_control, exchange) == []
    assert report.ok is handled  # exit code 1 for a difference Egis does not handle


@pytest.mark.parametrize("exchange", [BN, BY])
async def test_a_hedge_mode_account_is_reported_and_not_traded(
    engine: AsyncEngine, accounts_dir: Path, sim_control: SimulatorControl, exchange: Exchange
) -> None:
    await sim_control.set_position_mode(SIM_KEYS[exchange.value][0], hedge=True)
    report = await selftest(engine, accounts_dir, exchange)
    by_check = rows(report)
    assert (by_check["position_mode"].verdict, by_check["position_mode"].handled) == (DIFFERS, True)
    assert "Egis refuses opens on a hedge-mode account" in by_check["position_mode"].egis_does
    assert "hedge mode" in by_check["position_mode"].answer
    trading = {c: r for c, r in by_check.items() if r.verdict == UNCHECKED}
    assert set(trading) == TRADING_SENDS_ORDERS
    assert all("switch it to one-way" in r.answer for r in trading.values())
    assert await sim_control.orders(SIM_KEYS[exchange.value][0]) == []  # not one order
    assert by_check["flat_read"].verdict == HOLDS and by_check["left_flat"].verdict == HOLDS


async def test_nothing_is_traded_when_the_position_mode_cannot_be_read(
    engine: AsyncEngine, accounts_dir: Path, sim_control: SimulatorControl
) -> None:
    await sim_control.add_fault("GET /fapi/v1/positionSide/dual", "http", 3, http_status=502, body="bad gateway")
    report = await selftest(engine, accounts_dir, BN)
    by_check = rows(report)
    assert by_check["position_mode"].verdict == UNCHECKED and "502" in by_check["position_mode"].answer
    assert {c for c, r in by_check.items() if r.answer == "the position mode could not be read: no order was sent"} == (
        TRADING_SENDS_ORDERS
    )
    assert await sim_control.orders(SIM_KEYS["binanceusdm"][0]) == []
    assert by_check["clock"].verdict == HOLDS and report.flat


async def test_a_lagging_bybit_look_up_is_timed(
    engine: AsyncEngine, accounts_dir: Path, sim_control: SimulatorControl
) -> None:
    await sim_control.settings(bybit_realtime_closed_cap=0, bybit_history_delay_ms=1500)
    report = await selftest(engine, accounts_dir, BY)
    row = rows(report)["lookup_after_fill"]
    assert row.verdict == HOLDS and row.answer.startswith("found after ")
    assert 1.2 <= float(row.answer.split()[2]) <= 2.2  # history shows it 1.5 s after the fill


# ---------------------------------------------------------------- failures: the account is left flat whatever happens
async def test_a_failure_in_the_middle_still_leaves_the_account_flat(
    engine: AsyncEngine, accounts_dir: Path, sim_control: SimulatorControl
) -> None:
    """The venue takes the reduce-only order but its answer never arrives: nobody knows what the
    position is, so the script stops, and the clean-up re-reads the exchange and closes the rest."""
    key = SIM_KEYS["binanceusdm"][0]

    async def checkpoint(step: str) -> None:
        if step == "reduce_only_min_exempt":
            await sim_control.add_fault("POST /fapi/v1/order", "accept_then_timeout", seconds=3, api_key=key)

    report = await selftest(engine, accounts_dir, BN, checkpoint=checkpoint)
    by_check = rows(report)
    assert report.stopped is not None and "reduce_only_min_exempt" in report.stopped
    assert by_check["reduce_only_min_exempt"].verdict == UNCHECKED
    assert "RequestTimeout" in by_check["reduce_only_min_exempt"].answer
    assert by_check["reduce_only_larger"].verdict == UNCHECKED
    assert by_check["reduce_only_larger"].answer.startswith("not reached")
    assert by_check["open_readback"].verdict == HOLDS
    assert (by_check["left_flat"].verdict, by_check["left_flat"].answer) == (
        HOLDS,
        "flat: the selftest closed what it opened",
    )
    assert report.flat and not report.ok
    assert await held(sim_control, BN) == []
    accepted = [o for o in await sim_control.orders(key) if o["outcome"] == "accepted"]
    assert [o["reduce_only"] for o in accepted] == [False, True, True, True]  # open, reuse, the lost one, clean-up
    async with engine.connect() as conn:
        run = (await conn.execute(select(maintenance_runs))).mappings().one()
    assert run["finished_at"] is not None and run["found"]["left_flat"] == 1


@pytest.mark.parametrize("exchange", [BN, BY])
async def test_an_interruption_flattens_then_stops(
    engine: AsyncEngine, accounts_dir: Path, sim_control: SimulatorControl, exchange: Exchange
) -> None:
    """Ctrl-C (a cancellation) after the open: the position is closed before the command ends."""

    async def checkpoint(step: str) -> None:
        if step == "reuse_filled_id":
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await selftest(engine, accounts_dir, exchange, checkpoint=checkpoint)
    assert await held(sim_control, exchange) == []
    async with engine.connect() as conn:
        run = (await conn.execute(select(maintenance_runs))).mappings().one()
    assert run["found"]["left_flat"] == 1
    assert run["report"][0]["stopped"] == "interrupted (CancelledError)"


async def test_a_clean_up_that_cannot_flatten_says_so(
    engine: AsyncEngine, accounts_dir: Path, sim_control: SimulatorControl
) -> None:
    key = SIM_KEYS["bybit"][0]

    async def checkpoint(step: str) -> None:
        if step == "reduce_only_larger":  # from here on the venue refuses every order with a 503
            await sim_control.add_fault("POST /v5/order/create", "http", 50, http_status=503, body="down")

    report = await selftest(engine, accounts_dir, BY, checkpoint=checkpoint)
    left = rows(report)["left_flat"]
    assert (left.verdict, left.handled, report.flat, report.ok) == (DIFFERS, False, False, False)
    assert left.answer.startswith("could not flatten: BTCUSDT still holds long 0.003")
    assert "close it on the exchange by hand" in left.egis_does
    await sim_control.clear_faults()
    await sim_control.close_position(key, "BTCUSDT")


# ---------------------------------------------------------------- refusals
async def test_a_live_account_without_the_flag_is_refused_before_anything_is_sent(
    engine: AsyncEngine, tmp_path: Path, sim: SimulatorServer, sim_control: SimulatorControl
) -> None:
    accounts = tmp_path / "live-accounts"
    key, secret = SIM_KEYS["binanceusdm"]
    write_account(accounts, "binance-main", AccountConfig(exchange=BN, api_key=key, secret=secret))
    with pytest.raises(SelftestRefused, match=r"live binanceusdm account .* nothing was sent.*--i-understand"):
        await run_selftest(engine, accounts, "binance-main", actor="test")
    assert await sim_control.requests() == []
    async with engine.connect() as conn:
        assert (await conn.execute(select(maintenance_runs))).all() == []


async def test_an_account_holding_positions_egis_does_not_know_is_refused(
    engine: AsyncEngine, accounts_dir: Path, sim_control: SimulatorControl
) -> None:
    key = SIM_KEYS["bybit"][0]
    await _open_by_hand(accounts_dir)
    with pytest.raises(SelftestRefused, match=r"positions Egis does not know \(long ETHUSDT 0.01\)"):
        await selftest(engine, accounts_dir, BY)
    assert [o["client_order_id"] for o in await sim_control.orders(key)] == ["by-hand"]  # the selftest sent none

    # once Egis tracks that position, another symbol may be tested, but never the one it holds
    async with engine.begin() as conn:
        await conn.execute(
            bots.insert().values(name="alpha", exchange="bybit", account=ACCOUNTS["bybit"], budget_usd=D(1000))
        )
        await conn.execute(
            positions.insert().values(
                bot="alpha",
                exchange="bybit",
                account=ACCOUNTS["bybit"],
                symbol="ETHUSDT",
                side="long",
                status="open",
                quantity=D("0.01"),
                size_usd=D(30),
                uid="selftest-test",
            )
        )
    with pytest.raises(SelftestRefused, match=r"holds long 0.01 ETHUSDT: the test orders would net against it"):
        await selftest(engine, accounts_dir, BY, "ETHUSDT")
    report = await selftest(engine, accounts_dir, BY, "BTCUSDT")
    assert report.flat and [p["symbol"] for p in await held(sim_control, BY)] == ["ETHUSDT"]


async def _open_by_hand(accounts_dir: Path) -> None:
    """A position opened on the exchange behind Egis's back (the operator's web UI)."""
    from egis.exchanges.accounts import load_account
    from egis.exchanges.ccxt_gateway import CcxtGateway

    gateway = CcxtGateway(BY, ACCOUNTS["bybit"], load_account(ACCOUNTS["bybit"], BY, accounts_dir))
    try:
        ex = gateway.ccxt
        await gateway.load_markets()
        await ex.create_order("ETH/USDT:USDT", "market", "buy", "0.01", None, {"clientOrderId": "by-hand"})
    finally:
        await gateway.close()


# ---------------------------------------------------------------- the command line, `accounts show`, the worker
async def _cli(repo_root: Path, database_url: str, accounts_dir: Path, *args: str) -> tuple[int, str, str]:
    env = os.environ | {"DATABASE_URL": database_url, "EGIS_ACCOUNTS_DIR": str(accounts_dir)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "egis.cli",
        *args,
        cwd=repo_root,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_command_and_accounts_show(
    repo_root: Path, database_url: str, accounts_dir: Path, sim_control: SimulatorControl
) -> None:
    code, out, err = await _cli(repo_root, database_url, accounts_dir, "selftest", "--account", "sim-binance")
    assert (code, err) == (0, ""), out
    assert out.startswith("egis selftest: binanceusdm/sim-binance (local), BTCUSDT, run 1")
    assert " 7. reuse_filled_id         holds" in out
    assert out.rstrip().endswith("could not check 0; the account was left flat")

    await sim_control.settings(binance_reject_reused_client_id=True)
    code, out, err = await _cli(repo_root, database_url, accounts_dir, "selftest", "--account", "sim-binance", "--json")
    assert code == 0
    code, out, err = await _cli(repo_root, database_url, accounts_dir, "accounts", "show", "sim-binance")
    assert code == 0, err
    assert "endpoint       local: http://127.0.0.1" in out
    assert "last selftest  run 2," in out and "holds 15, differs 1 (0 not handled by Egis)" in out
    assert " 7. reuse_filled_id         DIFFERS\n" in out
    assert "Egis does       Egis never sends an order again blind" in out

    code, out, err = await _cli(repo_root, database_url, accounts_dir, "accounts", "show", "sim-bybit")
    assert code == 0 and "last selftest  never: run `egis selftest --account sim-bybit`" in out
    code, out, err = await _cli(repo_root, database_url, accounts_dir, "accounts", "show", "paper-1")
    assert code == 0 and "endpoint       paper: fills in the database at binanceusdm prices" in out
    assert "last selftest  never\n" in out

    live = accounts_dir / "live-one.json"
    live.write_text('{"exchange": "bybit", "api_key": "k", "secret": "s"}')
    code, out, err = await _cli(repo_root, database_url, accounts_dir, "selftest", "--account", "live-one")
    assert code == 1 and out == ""
    assert err.startswith("error: account 'live-one' is a live bybit account") and "nothing was sent" in err


async def test_the_worker_warns_at_start_about_a_difference_egis_does_not_handle(
    engine: AsyncEngine,
    accounts_dir: Path,
    sim_control: SimulatorControl,
    temporal_env,
    caplog,  # type: ignore[no-untyped-def]
) -> None:
    import worker
    from activities.deps import Deps
    from egis.config import Settings

    await sim_control.settings(bybit_reduce_only_min_notional_exempt=False)
    report = await selftest(engine, accounts_dir, BY, "DOGEUSDT")
    assert [r.check for r in report.unhandled] == ["reduce_only_min_exempt"]
    await selftest(engine, accounts_dir, BN)  # all holds: no warning
    async with engine.begin() as conn:
        for name, exchange in (("by-bot", "bybit"), ("bn-bot", "binanceusdm")):
            await conn.execute(
                bots.insert().values(name=name, exchange=exchange, account=ACCOUNTS[exchange], budget_usd=D(100))
            )
    settings = Settings(accounts_dir=accounts_dir, auto_schedules=False, task_queue="selftest-warn")
    deps = Deps.build(settings, engine, temporal_env.client)
    workers = worker.AccountWorkers(temporal_env.client, deps)
    with caplog.at_level(logging.INFO, logger="egis.worker"):
        try:
            await workers.discover()
        finally:
            await workers.shutdown()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("the last selftest of bybit/sim-bybit (run ")
    assert "reduce_only_min_exempt: reduce-only 1 = 0.2 USDT (minimum notional 5): 110094" in warnings[0]


# ---------------------------------------------------------------- the pure verdicts
@pytest.mark.parametrize(
    ("check", "exchange", "facts", "verdict", "handled"),
    [
        ("clock", BN, {"offset_ms": -999}, HOLDS, True),
        ("clock", BN, {"offset_ms": 1500}, DIFFERS, True),
        ("position_mode", BY, {"hedge": True}, DIFFERS, True),
        ("flat_read", BN, {"parsed_flat": True, "documented_shape": False}, DIFFERS, True),
        ("flat_read", BN, {"parsed_flat": False, "documented_shape": True}, DIFFERS, False),
        (
            "open_readback",
            BY,
            {"side": "long", "quantity": D("0.003"), "filled": D("0.003"), "entry": D(60010), "fill_price": D(60000)},
            HOLDS,
            True,
        ),
        (
            "open_readback",
            BY,
            {"side": "long", "quantity": D("0.002"), "filled": D("0.003"), "entry": D(60000), "fill_price": D(60000)},
            DIFFERS,
            False,
        ),
        ("market_answer", BN, {"status": "NEW", "executed": D(0)}, DIFFERS, True),
        ("market_answer", BY, {"order_id": True}, HOLDS, True),
        ("lookup_after_fill", BY, {"found_after_ms": 29_000, "window_ms": 30_000}, HOLDS, True),
        ("lookup_after_fill", BY, {"found_after_ms": None, "window_ms": 30_000}, DIFFERS, False),
        ("lookup_after_fill", BN, {"found_after_ms": 6_000, "window_ms": 5_000}, DIFFERS, False),
        ("reuse_filled_id", BN, {"accepted": True}, HOLDS, True),
        ("reuse_filled_id", BY, {"accepted": True}, DIFFERS, True),
        ("reuse_filled_id", BY, {"accepted": False, "code": "110072"}, HOLDS, True),
        ("unknown_id_lookup", BN, {"found": False, "error": "-1000 An unknown error"}, DIFFERS, False),
        ("reduce_only_larger", BN, {"outcome": "capped"}, HOLDS, True),
        ("reduce_only_larger", BN, {"outcome": "flipped"}, DIFFERS, False),
        (
            "reduce_only_larger",
            BN,
            {"outcome": "refused", "code": "-2022", "names": ["InvalidOrder", "ExchangeError", "BaseError"]},
            DIFFERS,
            True,
        ),
        (
            "reduce_only_larger",
            BN,
            {"outcome": "refused", "code": "-4005", "names": ["InvalidOrder", "ExchangeError", "BaseError"]},
            DIFFERS,
            False,
        ),
        ("reduce_only_flat", BY, {"accepted": True}, DIFFERS, False),
        (
            "reduce_only_flat",
            BY,
            {"accepted": False, "code": "110017", "names": ["InvalidOrder", "ExchangeError", "BaseError"]},
            HOLDS,
            True,
        ),
        (
            "reduce_only_flat",
            BN,
            {"accepted": False, "code": "-2019", "names": ["InsufficientFunds", "ExchangeError", "BaseError"]},
            DIFFERS,
            True,
        ),
        (
            "reduce_only_flat",
            BY,
            {"accepted": False, "code": "110001", "names": ["InvalidOrder", "ExchangeError", "BaseError"]},
            DIFFERS,
            False,
        ),
        ("min_refusal", BN, {"accepted": True}, DIFFERS, True),
        ("reduce_only_min_exempt", BN, {"accepted": True}, HOLDS, True),
        ("trade_history", BY, {"found": D("0.002"), "expected": D("0.003")}, DIFFERS, True),
        ("history_window", BY, {"accepted": True}, DIFFERS, True),
        ("rate_limit_headers", BY, {"missing": ["x-bapi-limit"]}, DIFFERS, True),
        ("left_flat", BY, {"flat": False}, DIFFERS, False),
    ],
)
def test_the_verdicts(check: str, exchange: Exchange, facts: dict[str, object], verdict: str, handled: bool) -> None:
    found = judge(check, exchange, facts)
    assert (found.verdict, found.handled) == (verdict, handled)
    assert bool(found.egis_does) is (verdict == DIFFERS)
    assert found.egis_does.startswith("not handled: ") is (not handled)
