"""Bad input gets a clear, typed error and writes nothing."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from egis.db.schema import audit_events, bots, orders, positions
from egis.db.store import FillReport, Store
from egis.errors import InvalidInput, QuantityRejected, UnknownBot
from egis.models import BotSpec, Exchange, OpenPositionInput, ReserveInput, Side
from egis.rules.sizing import MarketRules, quantity_for_usd, validate_quantity

D = Decimal
BTC = MarketRules(symbol="BTCUSDT", amount_step=D("0.001"), min_quantity=D("0.001"), min_notional=D("5"))


async def row_counts(store: Store) -> dict[str, int]:
    async with store.engine.connect() as conn:
        return {
            t.name: (await conn.execute(select(func.count()).select_from(t))).scalar_one()
            for t in (bots, positions, orders, audit_events)
        }


def open_input(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "bot": "alpha",
        "symbol": "BTCUSDT",
        "side": "long",
        "usd": "100",
        "ref": "r-1",
    }
    return base | overrides


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("usd", "0", "positive"),
        ("usd", "-10", "positive"),
        ("usd", "NaN", "finite"),
        ("usd", "Infinity", "finite"),
        ("usd", "1e30", "absurdly large"),
        ("usd", "10.001", "2 decimal places"),
        ("symbol", "btcusdt", "invalid symbol"),
        ("symbol", "BTC/USDT", "invalid symbol"),
        ("symbol", "BTCUSDT; DROP TABLE positions", "symbol too long: 29 characters, at most 24"),
        ("symbol", "BTC;DROP TABLE USDT", "invalid symbol"),
        ("symbol", "A" * 21 + "USDT", "symbol too long: 25 characters, at most 24"),
        ("bot", "a" * 41, "bot name too long: 41 characters, at most 40"),
        ("ref", "r" * 65, "position reference too long: 65 characters, at most 64"),
        ("ref", "r" * 1_000_000, "position reference too long: 1000000 characters, at most 64"),
        ("symbol", "ВТСUSDT", "invalid symbol"),
        ("symbol", "", "invalid symbol"),
        ("side", "sell", "long"),
        ("bot", "Alpha Bot", "invalid bot name"),
        ("ref", "../etc", "invalid position reference"),
    ],
)
def test_open_request_validation(field: str, value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as refused:
        OpenPositionInput.model_validate(open_input(**{field: value}))
    assert len(str(refused.value)) < 1000  # never the whole of an oversize input


def test_unknown_exchange_and_bad_budget_are_refused() -> None:
    with pytest.raises(ValidationError, match="binanceusdm"):
        BotSpec.model_validate({"name": "a", "exchange": "kraken", "account": "k", "budget_usd": "1"})
    with pytest.raises(ValidationError, match="positive"):
        BotSpec.model_validate({"name": "a", "exchange": "paper", "account": "k", "budget_usd": "-1"})


@pytest.mark.parametrize(
    ("quantity", "message"),
    [
        (D(0), "positive"),
        (D(-1), "positive"),
        (D("NaN"), "positive"),
        (D("0.0005"), "multiple of the amount step"),
        (D("0.0015"), "multiple of the amount step"),
        (D("1e40"), None),
    ],
)
def test_quantity_rules(quantity: Decimal, message: str | None) -> None:
    rules = MarketRules(
        symbol="BTCUSDT",
        amount_step=D("0.001"),
        min_quantity=D("0.001"),
        max_quantity=D("1000"),
        min_notional=D("5"),
    )
    with pytest.raises(QuantityRejected, match=message or "maximum"):
        validate_quantity(quantity, rules, D("60000"))


def test_a_reduce_only_order_may_close_a_remainder_below_the_market_minimums() -> None:
    sol = MarketRules(symbol="SOLUSDT", amount_step=D("0.1"), min_quantity=D("1"), min_notional=D("5"))
    with pytest.raises(QuantityRejected, match="below the market minimum 1"):
        validate_quantity(D("0.9"), sol, D("150"))  # an open of 0.9 is refused
    assert validate_quantity(D("0.9"), sol, D("150"), reduce_only=True) == D("0.9")
    assert validate_quantity(D("0.1"), sol, D("1"), reduce_only=True) == D("0.1")  # notional 0.1 < 5 too
    for bad, message in [(D("0.95"), "multiple of the amount step"), (D(0), "positive"), (D("1e40"), "maximum")]:
        with pytest.raises(QuantityRejected, match=message):  # the step and the maximum still hold
            validate_quantity(bad, sol, reduce_only=True)


def test_usd_below_market_minimum_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(QuantityRejected, match="below the minimum quantity"):
        quantity_for_usd(D("10"), D("60000"), BTC)  # $10 of BTC is 0.00016, under 0.001
    assert quantity_for_usd(D("100"), D("60000"), BTC) == D("0.001")


async def test_unknown_bot_writes_nothing(store: Store) -> None:
    before = await row_counts(store)
    with pytest.raises(UnknownBot, match="unknown bot 'ghost'"):
        await store.reserve_position(
            ReserveInput(
                workflow_id="wf-1",
                bot="ghost",
                symbol="BTCUSDT",
                side=Side.LONG,
                usd=D("10"),
                quantity=D("1"),
                exchange=Exchange.PAPER,
                account="p",
            ),
            actor="test",
        )
    assert await row_counts(store) == before


async def test_bot_on_another_exchange_writes_nothing(store: Store) -> None:
    await store.create_bot(BotSpec(name="alpha", exchange=Exchange.BYBIT, account="by-1", budget_usd=D(100)), actor="t")
    before = await row_counts(store)
    with pytest.raises(InvalidInput, match="trades on bybit"):
        await store.reserve_position(
            ReserveInput(
                workflow_id="wf-1",
                bot="alpha",
                symbol="BTCUSDT",
                side=Side.LONG,
                usd=D("10"),
                quantity=D("1"),
                exchange=Exchange.PAPER,
                account="by-1",
            ),
            actor="test",
        )
    assert await row_counts(store) == before


async def test_a_refused_fill_writes_nothing(store: Store) -> None:
    """A fill the intent rule refuses leaves order and position untouched."""
    await store.create_bot(BotSpec(name="alpha", exchange=Exchange.PAPER, account="p", budget_usd=D(100)), actor="t")
    ref = await store.reserve_position(
        ReserveInput(
            workflow_id="wf-1",
            bot="alpha",
            symbol="BTCUSDT",
            side=Side.LONG,
            usd=D("60"),
            quantity=D("0.001"),
            exchange=Exchange.PAPER,
            account="p",
        ),
        actor="test",
    )
    position_before = await store.get_position(ref.position_id)
    counts_before = await row_counts(store)
    with pytest.raises(InvalidInput):
        await store.record_fill(ref.order_id, FillReport("x", D("0.001"), D("-5")), actor="test")
    with pytest.raises(InvalidInput, match=">= 0"):
        await store.record_fill(ref.order_id, FillReport("x", D("-1"), D("5")), actor="test")
    with pytest.raises(InvalidInput, match="exceeds the order quantity"):
        await store.record_fill(ref.order_id, FillReport("x", D("0.002"), D("5")), actor="test")
    assert await store.get_position(ref.position_id) == position_before
    assert await row_counts(store) == counts_before
