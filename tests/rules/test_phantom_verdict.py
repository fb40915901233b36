"""egis.rules.phantom.verdict: a seed-rule match is repaired only when proven not real. Pure."""

from __future__ import annotations

from decimal import Decimal

from egis.rules.phantom import EXCHANGE_HOLDS, PHANTOM, REAL, UNVERIFIED, AccountEvidence, Held, verdict

D = Decimal
FLAT = AccountEvidence(())


def test_a_position_egis_opened_is_real_whatever_the_exchange_says() -> None:
    decided = verdict("BTCUSDT", "egabcdef123456o1", FLAT, D(0))
    assert decided.kind == REAL and not decided.repair and "opened by order egabcdef123456o1" in decided.reason


def test_without_a_read_of_the_exchange_nothing_is_repaired() -> None:
    assert verdict("BTCUSDT", None, None, D(0)).kind == UNVERIFIED
    unreadable = verdict("BTCUSDT", None, AccountEvidence(error="credentials rejected"), D(0))
    assert unreadable.kind == UNVERIFIED and "credentials rejected" in unreadable.reason


def test_a_short_the_exchange_holds_that_nothing_else_accounts_for_is_left_alone() -> None:
    held = AccountEvidence((Held("BTCUSDT", "short", D("0.002")),))
    decided = verdict("BTCUSDT", None, held, D(0))
    assert decided.kind == EXCHANGE_HOLDS and "short of 0.002" in decided.reason
    assert verdict("BTCUSDT", None, held, D("0.001")).kind == EXCHANGE_HOLDS  # partly accounted for
    assert verdict("BTCUSDT", None, held, D("0.002")).kind == PHANTOM  # another live position holds it


def test_longs_and_other_symbols_on_the_exchange_do_not_protect_a_phantom() -> None:
    others = AccountEvidence((Held("BTCUSDT", "long", D(1)), Held("ETHUSDT", "short", D(1))))
    decided = verdict("BTCUSDT", None, others, D(0))
    assert decided.kind == PHANTOM and decided.repair
