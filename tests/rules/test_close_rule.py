"""egis.rules.close: seed 003's four cases as one pure decision."""

from __future__ import annotations

from decimal import Decimal

from egis.rules.close import CloseStep, decide_close

D = Decimal
STEP = D("0.001")


def test_test_1_ghost_nothing_on_the_exchange_no_order() -> None:
    decision = decide_close(D("0.002"), None, verified=True, step=STEP)
    assert decision.step is CloseStep.GHOST and not decision.sends_an_order and decision.quantity == 0


def test_test_2_quantity_mismatch_closes_the_exchange_quantity() -> None:
    decision = decide_close(D(46), D(30), verified=True, step=D(1))
    assert decision.step is CloseStep.ADJUST_THEN_CLOSE and decision.quantity == D(30)
    assert decision.why == "exchange holds 30, we held 46"


def test_test_3_normal_close_closes_ours() -> None:
    assert decide_close(D("0.002"), D("0.002"), verified=True, step=STEP).step is CloseStep.CLOSE
    below_a_step = decide_close(D("0.002"), D("0.0024"), verified=True, step=STEP)
    assert below_a_step.step is CloseStep.CLOSE and below_a_step.quantity == D("0.002")


def test_test_4_read_failure_falls_back_to_the_database_quantity() -> None:
    decision = decide_close(D("0.002"), None, verified=False, step=STEP)
    assert decision.step is CloseStep.CLOSE_UNVERIFIED and decision.quantity == D("0.002")
