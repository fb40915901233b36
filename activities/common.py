"""What every activity module shares: turning our errors into Temporal failures, reaching an
account's gateway, and heartbeating."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.deps import Deps
from egis.errors import EgisError
from egis.exchanges.base import ExchangeCallError, Gateway
from egis.models import ErrorClass, Exchange


def typed_failure(exc: EgisError) -> ApplicationError:
    """Our typed refusals cross Temporal as non-retryable ApplicationErrors with the class name."""
    return ApplicationError(exc.message, exc.details, type=exc.code, non_retryable=True)


def transient(exc: ExchangeCallError, reason: str) -> ApplicationError:
    """A retryable failure: Temporal retries the activity with backoff."""
    return ApplicationError(f"{reason}: {exc}", type="TransientExchangeError", non_retryable=False)


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


@contextlib.asynccontextmanager
async def heartbeating(every: float = 5.0) -> AsyncIterator[None]:
    """Heartbeat while the body runs, so a dead worker is noticed within the heartbeat timeout."""

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(every)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
