"""Metrics, alert rules, batched price checks, and continue-as-new for long-lived positions."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest_asyncio
import yaml
from prometheus_client import REGISTRY
from sqlalchemy import update
from temporalio.client import WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.deps import Deps
from activities.watch import WatchActivities
from egis import metrics
from egis.db.schema import positions
from egis.exchanges.backoff import Backoff
from egis.models import (
    ALL_SEARCH_ATTRIBUTES,
    AgedCheckInput,
    AgedPolicy,
    CloseRequest,
    Exchange,
    PositionResult,
    SyncHint,
)
from egis.simulator.control import SimulatorControl
from egis.stack.processes import find_binary
from tests.lifecycle import Harness, harness
from workflows.position import PositionWorkflow

D = Decimal
H = 3600


def test_alert_rules_cover_seed_003_and_use_real_metrics(repo_root: Path) -> None:
    rules = yaml.safe_load((repo_root / "deploy" / "prometheus-alerts.yml").read_text())
    alerts = {r["alert"]: r for group in rules["groups"] for r in group["rules"]}
    assert {"EgisGhostPositionDetected", "EgisCloseValidationFailures", "EgisCloseQuantityMismatch"} <= set(alerts)
    assert alerts["EgisCloseValidationFailures"]["labels"]["severity"] == "critical"
    assert "> 5" in alerts["EgisCloseValidationFailures"]["expr"]
    exposed = {m.name for m in REGISTRY.collect()}  # counters are registered as <name> (+ _total on the wire)
    for alert in alerts.values():
        for name in re.findall(r"([a-z_]+)_total", alert["expr"]):
            assert name in exposed, f"{alert['alert']} uses {name}_total, which no Egis counter exposes"


async def test_a_back_off_shows_as_a_gauge_that_an_alert_watches(repo_root: Path) -> None:
    """Issue 12: while Egis backs off an account (a Retry-After, a ban), `exchange_backoff_seconds`
    says for how long, and the EgisExchangeBackoff rule fires on it."""
    rules = yaml.safe_load((repo_root / "deploy" / "prometheus-alerts.yml").read_text())
    alerts = {r["alert"]: r for group in rules["groups"] for r in group["rules"]}
    assert "exchange_backoff_seconds" in alerts["EgisExchangeBackoff"]["expr"]
    labels = {"exchange": "binanceusdm", "account": "gauge-check"}
    backoff = Backoff("binanceusdm", "gauge-check")  # no engine: this process only
    await backoff.impose(30, "429 -1003: too much request weight")
    assert 25 < (REGISTRY.get_sample_value("exchange_backoff_seconds", labels) or 0) <= 30
    backoff._until = 0.0  # the back-off is over
    assert await backoff.remaining() == 0
    assert REGISTRY.get_sample_value("exchange_backoff_seconds", labels) == 0


def test_metric_names_are_the_ones_the_issue_names() -> None:
    names = {
        m.name
        for m in (
            metrics.GHOST_POSITIONS,
            metrics.CLOSE_VALIDATION_FAILURES,
            metrics.CLOSE_QUANTITY_MISMATCHES,
            metrics.CLOSE_POSITION_NOT_FOUND,
            metrics.ORDERS_SUBMITTED,
            metrics.CLOSE_ATTEMPTS,
        )
        for m in m.collect()
    }
    assert names == {
        "ghost_positions_detected",
        "close_validation_failures",
        "close_quantity_mismatches",
        "close_position_not_found",
        "orders_submitted",
        "close_attempts",
    }


@pytest_asyncio.fixture
async def h(temporal_env: WorkflowEnvironment, deps: Deps) -> AsyncIterator[Harness]:
    async with harness(temporal_env.client, deps) as built:
        yield built


async def test_aged_price_checks_are_one_tickers_request_per_account(h: Harness, sim_control: SimulatorControl) -> None:
    """Four aged positions on one account: one tick makes ONE tickers request, not four."""
    policy = AgedPolicy(max_age_s=H, grace_s=H, loss_step_pct=D("0.5"), max_loss_pct=D(5), expire_s=48 * H)
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "CLOUDUSDT"]
    bots = [await h.bot(Exchange.BYBIT, aged=policy) for _ in symbols]
    for bot, symbol in zip(bots, symbols, strict=True):
        await h.open(bot, symbol=symbol, usd="200")
    for symbol, price in (("BTCUSDT", "59000"), ("SOLUSDT", "149"), ("CLOUDUSDT", "0.13")):
        await sim_control.set_price(symbol, price)  # under breakeven: no target reached
    await sim_control.set_price("ETHUSDT", "3100")  # above it: the grace target is reached
    before = len(await sim_control.requests())
    result = await ActivityEnvironment().run(
        WatchActivities(h.deps).check_aged_exits,
        AgedCheckInput(exchange=Exchange.BYBIT, account="sim-bybit", now=datetime.now(UTC) + timedelta(hours=1.5)),
    )
    requests = (await sim_control.requests())[before:]
    assert [r["path"] for r in requests] == ["/v5/market/tickers"]
    assert result.watched == 4 and result.tickers_requests == 1
    assert [(t.phase, t.price) for t in result.triggers] == [("grace", D("3100"))]


@pytest_asyncio.fixture
async def can_env() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server that suggests continue-as-new after 40 events (the default is thousands)."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(find_binary("temporal")),
        data_converter=pydantic_data_converter,
        search_attributes=ALL_SEARCH_ATTRIBUTES,
        dev_server_log_level="error",
        dev_server_extra_args=["--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=40"],
    )
    yield env
    await env.shutdown()


async def test_a_long_lived_position_continues_as_new_and_still_closes(
    can_env: WorkflowEnvironment, deps: Deps
) -> None:
    async with harness(can_env.client, deps) as h:
        bot = await h.bot(Exchange.PAPER)
        view = await h.open(bot)
        handle = h.temporal.get_workflow_handle(view.workflow_id)
        first_run = (await handle.describe()).run_id
        for _ in range(8):  # each sync hint is a re-read on the exchange: history grows
            await handle.signal(PositionWorkflow.sync_hint, SyncHint(kind="quantity_drift"))
        described = await handle.describe()
        for _ in range(100):
            if described.run_id != first_run:
                break
            await handle.signal(PositionWorkflow.sync_hint, SyncHint(kind="quantity_drift"))
            described = await h.temporal.get_workflow_handle(view.workflow_id).describe()
        assert described.run_id != first_run, "the workflow never continued as new"
        assert described.status == WorkflowExecutionStatus.RUNNING
        old = await h.temporal.get_workflow_handle(view.workflow_id, run_id=first_run).describe()
        assert old.status == WorkflowExecutionStatus.CONTINUED_AS_NEW
        state = await h.client.position_state(view.workflow_id)
        assert state.status == "open" and state.position_id == view.position_id and state.quantity == view.quantity
        result = await h.client.close_position(view.workflow_id, CloseRequest(reason="manual"))
        assert result is not None and result.status == "closed"
        final = await h.temporal.get_workflow_handle(view.workflow_id, result_type=PositionResult).result()
        assert final.status == "closed" and final.position_id == view.position_id


async def test_closed_positions_count_in_the_budget_no_more(h: Harness) -> None:
    """The budget frees itself because it follows the status (no separate bookkeeping to drift)."""
    bot = await h.bot(Exchange.PAPER, budget="560")
    views = [await h.open(bot, symbol=s, usd="120") for s in ("BTCUSDT", "ETHUSDT", "DOGEUSDT")]
    assert (await h.client.budget(bot)).available_usd == D("200.00")
    await h.client.close_position(views[0].workflow_id, CloseRequest(reason="manual"))
    assert (await h.client.budget(bot)).available_usd == D("320.00")
    async with h.deps.engine.begin() as conn:  # a status change by anyone moves the budget the same way
        await conn.execute(update(positions).where(positions.c.id == views[1].position_id).values(size_usd=D("150")))
    assert (await h.client.budget(bot)).available_usd == D("290.00")


def test_garbage_collection_pauses_are_measured_and_long_ones_logged(monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    """At 10,000 cached workflows a full collection walks them all while nothing else runs: the
    worker times every collection (`python_gc_pause_seconds`) and logs the long ones."""
    import gc
    import logging

    def full_collections() -> float:
        return REGISTRY.get_sample_value("python_gc_pause_seconds_count", {"generation": "2"}) or 0.0

    before = full_collections()
    monkeypatch.setattr(metrics, "GC_PAUSE_WARNING_S", 0.0)  # every pause counts as long here
    log = logging.getLogger("egis.test.gc")
    callback = metrics.watch_gc_pauses(log)
    try:
        with caplog.at_level(logging.WARNING, logger="egis.test.gc"):
            gc.collect(2)
    finally:
        gc.callbacks.remove(callback)
    assert full_collections() == before + 1
    assert any("garbage collection of generation 2 paused the worker" in r.getMessage() for r in caplog.records)
    gc.collect(2)  # removed: no longer counted
    assert full_collections() == before + 1


def test_the_startup_heap_is_frozen_out_of_full_collections() -> None:
    """A full collection stops the worker while it walks generation 2; the worker's startup heap
    (its modules, ccxt above all) is frozen out of it once the worker is built."""
    import gc

    import ccxt  # noqa: F401  (what a worker has loaded)

    from worker import freeze_startup_heap

    try:
        frozen = freeze_startup_heap()
        assert frozen > 100_000 and gc.get_freeze_count() == frozen
        gc.collect(2)
        assert len(gc.get_objects(generation=2)) < frozen / 10, "a full collection still walks the startup heap"
    finally:
        gc.unfreeze()
