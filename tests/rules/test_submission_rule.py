"""egis.rules.submission: when may an order be sent (again)? Pure: no database, no Temporal."""

from __future__ import annotations

from datetime import timedelta

import pytest

from egis.models import ErrorClass, Exchange
from egis.rules.submission import LOOKUP_LAG, Found, Step, after_send, next_step

NOW = timedelta(0)


def test_a_fresh_order_is_sent() -> None:
    assert next_step(Exchange.BYBIT, 0, None, None, None) is Step.SEND


@pytest.mark.parametrize("exchange", list(Exchange))
def test_an_order_the_venue_holds_filled_is_recorded_never_resent(exchange: Exchange) -> None:
    for status in ("filled", "partially_filled", "canceled"):
        assert next_step(exchange, 1, None, Found(status, True), NOW) is Step.RECORD


def test_an_accepted_order_with_nothing_filled_yet_is_waited_for() -> None:
    """Binance may answer a MARKET order NEW / 0: never a zero fill, never a resend."""
    assert next_step(Exchange.BINANCEUSDM, 1, None, Found("open", False), timedelta(hours=1)) is Step.WAIT


@pytest.mark.parametrize("status", ["canceled", "rejected"])
def test_an_order_ended_unfilled_is_a_refusal(status: str) -> None:
    assert next_step(Exchange.BYBIT, 2, ErrorClass.VERIFY, Found(status, False), NOW) is Step.REFUSED


@pytest.mark.parametrize("exchange", [Exchange.BINANCEUSDM, Exchange.BYBIT])
def test_not_found_within_the_venues_lag_is_not_absence(exchange: Exchange) -> None:
    lag = LOOKUP_LAG[exchange]
    assert next_step(exchange, 1, None, None, lag - timedelta(milliseconds=1)) is Step.WAIT
    assert next_step(exchange, 1, ErrorClass.VERIFY, None, NOW) is Step.WAIT
    assert next_step(exchange, 1, None, None, None) is Step.WAIT  # unknown send time: as if just now
    assert next_step(exchange, 1, None, None, lag) is Step.SEND


def test_a_send_the_venue_refused_outright_can_be_sent_again_at_once() -> None:
    """A TRANSIENT answer (throttled, clock) means "not accepted": nothing to look for."""
    assert next_step(Exchange.BYBIT, 3, ErrorClass.TRANSIENT, None, NOW) is Step.SEND


def test_the_paper_exchange_has_no_lag() -> None:
    assert next_step(Exchange.PAPER, 1, None, None, NOW) is Step.SEND


def test_after_a_send() -> None:
    assert after_send(True) is Step.RECORD
    assert after_send(False) is Step.WAIT
