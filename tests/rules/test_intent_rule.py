"""The intent rule: only OPEN fills create positions; CLOSE fills never create, flip or increase."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egis.errors import IntentViolation, InvalidInput
from egis.models import Intent, OrderSide, PositionStatus, Side, order_side_for
from egis.rules.intent import Fill, OrderRef, PositionSnapshot, apply_fill, increment, pnl

D = Decimal


def order(intent: Intent, side: Side) -> OrderRef:
    return OrderRef(intent=intent, side=order_side_for(intent, side), position_side=side)


def test_open_fill_creates_a_position() -> None:
    p = apply_fill(None, order(Intent.OPEN, Side.LONG), Fill(D("0.01"), D("60000")))
    assert (p.side, p.status, p.quantity, p.entry_price) == (
        Side.LONG,
        PositionStatus.OPEN,
        D("0.01"),
        D("60000"),
    )


def test_open_fill_on_opening_row_and_partial_fills_average_the_entry() -> None:
    opening = PositionSnapshot(side=Side.SHORT, status=PositionStatus.OPENING)
    p = apply_fill(opening, order(Intent.OPEN, Side.SHORT), Fill(D("1"), D("100")))
    p = apply_fill(p, order(Intent.OPEN, Side.SHORT), Fill(D("3"), D("120")))
    assert p.quantity == D("4") and p.entry_price == D("115") and p.status is PositionStatus.OPEN


def test_seed_000_close_sell_closes_the_long_and_creates_nothing() -> None:
    """Closing a LONG is a market SELL, like opening a SHORT; the intent tells them apart."""
    long = apply_fill(None, order(Intent.OPEN, Side.LONG), Fill(D("0.5"), D("100")))
    close_sell = order(Intent.CLOSE, Side.LONG)
    assert close_sell.side is OrderSide.SELL
    closed = apply_fill(long, close_sell, Fill(D("0.5"), D("110")))
    assert closed.side is Side.LONG and closed.status is PositionStatus.CLOSED
    assert closed.exit_price == D("110") and closed.realized_pnl == D("5.0")
    # the same SELL, with close intent, can never be turned into a new SHORT
    with pytest.raises(IntentViolation, match="never create"):
        apply_fill(None, close_sell, Fill(D("0.5"), D("110")))


def test_close_cannot_flip() -> None:
    long = apply_fill(None, order(Intent.OPEN, Side.LONG), Fill(D("1"), D("100")))
    with pytest.raises(IntentViolation, match="flip"):
        apply_fill(long, order(Intent.CLOSE, Side.LONG), Fill(D("1.5"), D("100")))


def test_close_order_on_the_wrong_side_would_increase_and_is_refused() -> None:
    long = apply_fill(None, order(Intent.OPEN, Side.LONG), Fill(D("1"), D("100")))
    buy = OrderRef(intent=Intent.CLOSE, side=OrderSide.BUY, position_side=Side.LONG)
    with pytest.raises(IntentViolation, match="increase"):
        apply_fill(long, buy, Fill(D("1"), D("100")))


def test_close_order_for_the_other_side_is_refused() -> None:
    long = apply_fill(None, order(Intent.OPEN, Side.LONG), Fill(D("1"), D("100")))
    with pytest.raises(IntentViolation, match=r"SHORT|short"):
        apply_fill(long, order(Intent.CLOSE, Side.SHORT), Fill(D("1"), D("100")))


@pytest.mark.parametrize("status", [PositionStatus.CLOSED, PositionStatus.FAILED, PositionStatus.OPENING])
def test_close_fill_on_a_non_live_position_is_refused(status: PositionStatus) -> None:
    p = PositionSnapshot(side=Side.LONG, status=status, quantity=D("1"), entry_price=D("1"))
    with pytest.raises(IntentViolation, match="status"):
        apply_fill(p, order(Intent.CLOSE, Side.LONG), Fill(D("1"), D("1")))


def test_open_fill_cannot_touch_a_closed_position() -> None:
    p = PositionSnapshot(side=Side.LONG, status=PositionStatus.CLOSED, quantity=D("1"), closed_quantity=D("1"))
    with pytest.raises(IntentViolation):
        apply_fill(p, order(Intent.OPEN, Side.LONG), Fill(D("1"), D("1")))


def test_partial_close_then_full_close_accumulates_pnl_for_a_short() -> None:
    short = apply_fill(None, order(Intent.OPEN, Side.SHORT), Fill(D("2"), D("100")))
    p = apply_fill(short, order(Intent.CLOSE, Side.SHORT), Fill(D("1"), D("90")))
    assert p.status is PositionStatus.CLOSING and p.open_quantity == D("1") and p.realized_pnl == D("10")
    p = apply_fill(p, order(Intent.CLOSE, Side.SHORT), Fill(D("1"), D("80")))
    assert p.status is PositionStatus.CLOSED and p.realized_pnl == D("30") and p.exit_price == D("85")


@pytest.mark.parametrize("bad", [D(0), D(-1), D("NaN"), D("Infinity")])
def test_bad_fill_numbers_are_invalid_input(bad: Decimal) -> None:
    with pytest.raises(InvalidInput):
        apply_fill(None, order(Intent.OPEN, Side.LONG), Fill(bad, D("1")))
    with pytest.raises(InvalidInput):
        apply_fill(None, order(Intent.OPEN, Side.LONG), Fill(D("1"), bad))


def test_increment_turns_cumulative_reports_into_new_fills_only_once() -> None:
    first = increment(D(0), None, D("2"), D("100"))
    assert first == Fill(D("2"), D("100"))
    assert increment(D("2"), D("100"), D("2"), D("100")) is None  # the same report twice
    second = increment(D("2"), D("100"), D("3"), D("110"))
    assert second == Fill(D("1"), D("130"))
    with pytest.raises(InvalidInput, match="backwards"):
        increment(D("3"), D("110"), D("2"), D("100"))


def test_pnl_sign_by_side() -> None:
    assert pnl(Side.LONG, D(100), D(110), D(2)) == D(20)
    assert pnl(Side.SHORT, D(100), D(110), D(2)) == D(-20)


# ---------------------------------------------------------------- property test
quantities = st.decimals(min_value=D("0.001"), max_value=D("5"), places=3)
prices = st.decimals(min_value=D("0.01"), max_value=D("100000"), places=2)
fills = st.lists(
    st.tuples(st.sampled_from(list(Intent)), st.sampled_from(list(Side)), st.booleans(), quantities, prices),
    min_size=1,
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(fills)
def test_no_sequence_of_fills_lets_a_close_create_flip_or_increase(sequence: list) -> None:  # type: ignore[type-arg]
    """Random open/close fills, with right and wrong order sides, applied to one position slot."""
    position: PositionSnapshot | None = None
    for intent, side, right_side, qty, price in sequence:
        order_side = order_side_for(intent, side)
        if not right_side:
            order_side = OrderSide.SELL if order_side is OrderSide.BUY else OrderSide.BUY
        ref = OrderRef(intent=intent, side=order_side, position_side=side)
        try:
            after = apply_fill(position, ref, Fill(qty, price))
        except IntentViolation:
            continue  # refused: nothing changes (the caller writes nothing)
        if intent is Intent.CLOSE:
            assert position is not None, "a close fill created a position"
            assert after.side is position.side, "a close fill flipped a position"
            assert after.quantity == position.quantity, "a close fill increased a position"
            assert after.open_quantity < position.open_quantity
        else:
            assert right_side and (position is None or position.side is side)
        assert after.quantity >= 0 and after.closed_quantity >= 0 and after.open_quantity >= 0
        assert (after.status is PositionStatus.CLOSED) == (after.open_quantity == 0)
        position = after
