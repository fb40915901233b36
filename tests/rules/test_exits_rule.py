"""egis.rules.exits: a ghost's exit from the venue's closing trades (newest first). Pure."""

from __future__ import annotations

from decimal import Decimal

from egis.models import Side
from egis.rules.exits import AUTO_DELEVERAGED, CLOSED_ON_EXCHANGE, LIQUIDATED, ClosingTrade, exit_from_trades

D = Decimal


def test_no_trade_means_unknown_never_zero() -> None:
    exit_ = exit_from_trades(Side.LONG, D(100), D(1), [])
    assert (exit_.price, exit_.realized_pnl, exit_.reason) == (None, None, CLOSED_ON_EXCHANGE)


def test_the_newest_trades_that_cover_the_open_quantity_are_used() -> None:
    trades = [ClosingTrade(D(110), D("0.5"), None), ClosingTrade(D(90), D("0.5"), None), ClosingTrade(D(1), D(5), None)]
    exit_ = exit_from_trades(Side.LONG, D(100), D(1), trades)
    assert exit_.price == D(100) and exit_.realized_pnl == D(0) and exit_.reason == CLOSED_ON_EXCHANGE


def test_the_venues_own_pnl_wins_when_every_trade_used_has_one() -> None:
    exit_ = exit_from_trades(Side.SHORT, D(100), D(2), [ClosingTrade(D(95), D(2), D("9.5"))])
    assert exit_.realized_pnl == D("9.5")
    computed = exit_from_trades(Side.SHORT, D(100), D(1), [ClosingTrade(D(95), D(2), D("9.5"))])  # partly used
    assert computed.realized_pnl == D(5)


def test_liquidation_and_adl_are_told_apart() -> None:
    liquidated = exit_from_trades(Side.LONG, D(100), D(1), [ClosingTrade(D(50), D(1), None, "liquidation")])
    adl = exit_from_trades(Side.LONG, D(100), D(1), [ClosingTrade(D(150), D(1), None, "adl")])
    assert liquidated.reason == LIQUIDATED and liquidated.realized_pnl == D(-50)
    assert adl.reason == AUTO_DELEVERAGED
    older_liquidation = [ClosingTrade(D(110), D(1), None), ClosingTrade(D(50), D(1), None, "liquidation")]
    assert exit_from_trades(Side.LONG, D(100), D(1), older_liquidation).reason == CLOSED_ON_EXCHANGE
