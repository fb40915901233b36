"""What every activity module shares: turning our errors into Temporal failures, reaching an
account's gateway, comparing an account with the database, and heartbeating."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.deps import Deps
from egis.db import maintenance as mdb
from egis.errors import EgisError
from egis.exchanges.base import ExchangeCallError, Gateway
from egis.models import ErrorClass, Exchange
from egis.rules.sync import SyncFindings, TheirPosition, diff_account

MAX_RETRY_DELAY_S = 30.0


def typed_failure(exc: EgisError) -> ApplicationError:
    """Our typed refusals cross Temporal as non-retryable ApplicationErrors with the class name."""
    return ApplicationError(exc.message, exc.details, type=exc.code, non_retryable=True)


def transient(exc: ExchangeCallError, reason: str) -> ApplicationError:
    """A retryable failure: Temporal retries the activity with backoff, or, when the venue said
    how long to wait (Retry-After, a ban), not before then: a close waits a ban out."""
    # look again at most every 30 s: each retry only re-reads the shared back-off (nothing is sent
    # while it lasts), and a ban that ends early, or one an operator lifted, costs no extra wait
    delay = timedelta(seconds=min(exc.retry_after, MAX_RETRY_DELAY_S)) if exc.retry_after else None
    return ApplicationError(
        f"{reason}: {exc}", type="TransientExchangeError", non_retryable=False, next_retry_delay=delay
    )


def not_yet(reason: str, seconds: float = 1.0) -> ApplicationError:
    """Nothing failed, the venue has not settled yet (an order it has but not filled, a look-up
    that may lag): look again shortly. Sends nothing."""
    return ApplicationError(
        reason, type="NotSettledYet", non_retryable=False, next_retry_delay=timedelta(seconds=seconds)
    )


def read_failure(exc: ExchangeCallError) -> ApplicationError:
    """A failed exchange read, classified: retry if transient, stop (with the reason) if not."""
    verdict = exc.classify("read")
    if verdict.outcome is ErrorClass.TRANSIENT:
        return transient(exc, verdict.reason)
    return ApplicationError(f"{verdict.reason}: {exc}", type="ExchangeRejected", non_retryable=True)


async def gateway_for(deps: Deps, exchange: Exchange, account: str) -> Gateway:
    """The account's gateway; missing credentials are a typed, non-retryable failure."""
    try:
        return await deps.gateways.get(exchange, account)
    except EgisError as exc:
        raise typed_failure(exc) from None


async def compare_account(deps: Deps, exchange: Exchange, account: str) -> SyncFindings:
    """ONE positions request for the account, compared with our positions there (the exchange-sync
    rule, `egis.rules.sync.diff_account`): the REST sync's and the stream's gap-fill's read. A
    failed read raises ExchangeCallError; nothing is compared."""
    gateway = await gateway_for(deps, exchange, account)
    theirs = await gateway.fetch_positions()
    async with deps.engine.connect() as conn:
        ours = await mdb.account_positions(conn, exchange.value, account)
    steps = {p.symbol: (await gateway.market(p.symbol)).amount_step for p in ours}
    return diff_account(
        ours,
        [TheirPosition(p.symbol, p.side.value, p.quantity) for p in theirs],
        steps,
        datetime.now(UTC),
        deps.settings.sync_grace_seconds,
    )


@contextlib.asynccontextmanager
async def heartbeating(every: float = 5.0) -> AsyncIterator[None]:
    """Heartbeat while the body runs, so a dead worker is noticed within the heartbeat timeout
    (which counts from the start, so the first beat comes after `every` seconds, not at once: most
    opens and closes take milliseconds, and each beat is an RPC and a history-store write on the
    Temporal server)."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(every)
            activity.heartbeat()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
