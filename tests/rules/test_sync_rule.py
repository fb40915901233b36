"""egis.rules.sync: ghosts, drifts, orphans, and what an open may not net against. Pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from egis.rules.sync import OurPosition, TheirPosition, diff_account, untracked

D = Decimal
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def ours(symbol: str, side: str = "long", qty: str = "1", status: str = "open", age: float = 60) -> OurPosition:
    return OurPosition(1, "pos-a-1", symbol, side, status, D(qty), NOW - timedelta(seconds=age))


def test_untracked_is_what_no_live_position_accounts_for() -> None:
    theirs = [TheirPosition("BTCUSDT", "short", D("0.002")), TheirPosition("ETHUSDT", "long", D(1))]
    assert untracked(theirs, [ours("ETHUSDT")]) == [theirs[0]]
    assert untracked(theirs, [ours("BTCUSDT", "short", status="opening"), ours("ETHUSDT")]) == []
    assert untracked(theirs, [ours("BTCUSDT", "long")]) == theirs  # the other side does not account for it


def test_diff_finds_ghosts_drifts_and_orphans_and_leaves_young_or_busy_positions_alone() -> None:
    theirs = [TheirPosition("ETHUSDT", "long", D(2)), TheirPosition("SOLUSDT", "long", D(1))]
    found = diff_account(
        [ours("BTCUSDT"), ours("ETHUSDT"), ours("XRPUSDT", age=1), ours("ADAUSDT", status="closing")],
        theirs,
        {"ETHUSDT": D("0.001")},
        NOW,
        grace_seconds=10,
    )
    assert [g.symbol for g in found.ghosts] == ["BTCUSDT"]
    assert [(d.position.symbol, d.exchange_quantity) for d in found.drifts] == [("ETHUSDT", D(2))]
    assert [o.symbol for o in found.orphans] == ["SOLUSDT"]
