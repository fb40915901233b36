"""The account stream activity: follows one exchange account's private stream and tells the
position workflows what it sees, within a fraction of a second.

- A position gone flat (or flipped) that we hold open -> `sync_hint(ghost)` to its workflow,
  which re-reads the exchange and closes it as `closed_on_exchange` (no order);
- a size change -> `sync_hint(quantity_drift)`;
- a fill of one of our own orders -> recorded at once through the intent rule (`record_fill`,
  idempotent: the order activity that sent it finds it recorded);
- after every (re)connect, and whenever the stream has been silent for WATCHDOG_SECONDS, the
  account's positions are read by REST and diffed against the database (the exchange-sync
  rule): the venues replay nothing, so an event missed while the socket was down is never lost.

Signals go straight to the position workflows (never fanned through one workflow) and are
de-duplicated per position. It runs for RUN_SECONDS and returns (the workflow loops), heartbeating
meanwhile; a worker that dies loses it to another worker within the heartbeat timeout.
Secrets are read here from the account file / environment, never from the workflow's input.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from temporalio import activity

from activities.common import compare_account, gateway_for
from activities.deps import Deps
from egis import metrics
from egis.db import maintenance as mdb
from egis.db import store as db
from egis.db.schema import orders, positions, stream_status
from egis.errors import EgisError
from egis.exchanges.accounts import load_account
from egis.exchanges.backoff import Backoff
from egis.exchanges.base import ExchangeCallError
from egis.exchanges.ccxt_gateway import CcxtGateway
from egis.exchanges.streams import AccountStream, OrderUpdate, PositionUpdate, StreamLost
from egis.models import AccountInput, Exchange, StreamRunReport, SyncHint
from egis.rules.sizing import quantities_differ
from egis.rules.sync import OurPosition

log = logging.getLogger("egis.streams")

RUN_SECONDS = 3600.0
"""One activity run follows the stream this long, then returns; the workflow starts the next."""
WATCHDOG_SECONDS = 60.0
"""Silent this long (no event at all): read the account by REST and diff it (one request a minute
on a quiet account; the 15 s exchange sync keeps running beside the stream either way)."""
SILENCE_RECONNECT_SECONDS = 300.0
"""Silent this long: also drop the connection and connect again. A dead socket is usually noticed
sooner by ccxt's own pings (Bybit: 18 s pings, ~36 s to give up); this catches one that still
answers pings but delivers nothing."""
RECONNECT_PAUSE = (0.5, 15.0)
"""Pause before reconnecting: from the first value, doubling, capped at the second."""
HEARTBEAT_SECONDS = 2.0
REPORTED_KEPT = 200
RETELL_SECONDS = 5.0
"""A ghost told to a position workflow that is still open this long after is told again: a hint
that reaches the workflow while it is still settling its open (the database already says open,
the workflow not yet) is not taken, and the venue sends no second event."""
MAX_RETELLS = 12
"""Then the stream stops telling that position (logged); the REST sync still covers it."""


def remember(reported: list[int], position_id: int, keep: int = REPORTED_KEPT) -> list[int]:
    """The positions the stream reported, for the REST sync's "did the stream miss it?" check:
    each once, the latest last (a re-tell moves it to the end), at most `keep`."""
    return [*(pid for pid in reported if pid != position_id), position_id][-keep:]


@dataclass
class _Unconfirmed:
    """A ghost told to its workflow whose position the database still holds open."""

    position: OurPosition
    hint: SyncHint
    told_at: float  # monotonic
    retold: int = 0


@dataclass
class _Run:
    """What one activity run has seen (for its report, the status row and de-duplication)."""

    exchange: Exchange
    account: str
    told: dict[int, str] = field(default_factory=dict)  # position id -> last hint sent
    unconfirmed: dict[int, _Unconfirmed] = field(default_factory=dict)  # position id -> a ghost told, not taken
    reported: list[int] = field(default_factory=list)  # positions reported (kept for the sync's check)
    events: int = 0
    reconnects: int = 0
    gap_fill_findings: int = 0
    connected_since: datetime | None = None
    last_event_at: datetime | None = None
    lag_ms: int | None = None
    last_error: str | None = None
    written: dict[str, int] = field(default_factory=dict)  # counters already added to the status row

    def new_since_written(self, name: str) -> int:
        """Counters accumulate across runs in the status row: add only what is new since the last write."""
        now: int = getattr(self, name)
        delta = now - self.written.get(name, 0)
        self.written[name] = now
        return delta


class StreamActivities:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @activity.defn(name="account_stream")
    async def account_stream(self, request: AccountInput) -> StreamRunReport:
        run = _Run(request.exchange, request.account)
        if not self.deps.settings.streams or not _wants_stream(self.deps, request):
            return StreamRunReport(exchange=request.exchange, account=request.account, disabled=True)
        beat = asyncio.create_task(_heartbeat())
        try:
            await self._follow(run, time.monotonic() + RUN_SECONDS)
        finally:
            beat.cancel()
            metrics.STREAM_CONNECTED.labels(run.exchange.value, run.account).set(0)
            with contextlib.suppress(Exception):
                await self._write_status(run, connected=False)
        return StreamRunReport(
            exchange=request.exchange,
            account=request.account,
            events=run.events,
            reconnects=run.reconnects,
            gap_fill_findings=run.gap_fill_findings,
            last_error=run.last_error,
        )

    async def _follow(self, run: _Run, deadline: float) -> None:
        pause = RECONNECT_PAUSE[0]
        first = True
        while time.monotonic() < deadline:
            try:
                config = load_account(run.account, run.exchange, self.deps.settings.resolved_accounts_dir)
            except EgisError as exc:  # no credentials: nothing to follow; the REST sync still runs
                run.last_error = str(exc)
                await self._write_status(run, connected=False)
                await asyncio.sleep(min(60.0, deadline - time.monotonic()))
                continue
            # the venue throttled or banned this account (or its IP): connecting now would call it
            # during the back-off and lengthen a ban (Binance doubles it, up to 3 days). The back-off
            # is this process's gateway's (one per account: what the stream imposes, the REST calls
            # of this process see at once, and the other way round).
            backoff = await self._backoff(run)
            left = await backoff.remaining()
            if left > 0:
                run.last_error = f"backing off for another {left:.0f}s (the venue throttled this account or its IP)"
                with contextlib.suppress(Exception):
                    await self._write_status(run, connected=False)
                await asyncio.sleep(max(0.0, min(left, deadline - time.monotonic())))
                continue
            stream = AccountStream(run.exchange, config)
            try:
                await stream.start()
                if not first:
                    run.reconnects += 1
                    metrics.STREAM_RECONNECTS.labels(run.exchange.value, run.account).inc()
                first, pause = False, RECONNECT_PAUSE[0]
                run.connected_since, run.last_error = datetime.now(UTC), None
                metrics.STREAM_CONNECTED.labels(run.exchange.value, run.account).set(1)
                await self._write_status(run, connected=True)
                await self._gap_fill(run, "connect")  # whatever happened while we were not connected
                await self._consume(run, stream, deadline)
            except StreamLost as lost:
                run.last_error = str(lost)[:300]
                log.warning("%s/%s: private stream lost (%s); reconnecting", run.exchange, run.account, lost)
                if lost.throttle:  # every worker's calls wait it out, this stream's too
                    with contextlib.suppress(Exception):
                        await backoff.impose(
                            lost.throttle.seconds, f"stream connect: {str(lost)[:200]}", ip=lost.throttle.ip_wide
                        )
            finally:
                metrics.STREAM_CONNECTED.labels(run.exchange.value, run.account).set(0)
                await stream.close()
            with contextlib.suppress(Exception):
                await self._write_status(run, connected=False)
            if time.monotonic() < deadline:
                await asyncio.sleep(pause)
                pause = min(pause * 2, RECONNECT_PAUSE[1])

    async def _backoff(self, run: _Run) -> Backoff:
        gateway = await self.deps.gateways.get(run.exchange, run.account)
        if not isinstance(gateway, CcxtGateway):  # streams are followed on live venues only
            raise ValueError(f"no private stream for {run.exchange}")
        return gateway.backoff

    async def _consume(self, run: _Run, stream: AccountStream, deadline: float) -> None:
        silent_since = watched_at = time.monotonic()
        async for event in stream.events(idle=min(RETELL_SECONDS, WATCHDOG_SECONDS)):
            now = time.monotonic()
            if now >= deadline:
                return
            if event is not None:
                silent_since = now
                await self._handle(run, event)
            elif now - max(silent_since, watched_at) >= WATCHDOG_SECONDS:
                # the watchdog: nothing for a while; the venues replay nothing
                watched_at = now
                await self._gap_fill(run, "silence")
                if now - silent_since >= SILENCE_RECONNECT_SECONDS:
                    raise StreamLost(f"silent for {SILENCE_RECONNECT_SECONDS:.0f}s")
            await self._retell(run)

    async def _retell(self, run: _Run) -> None:
        """Tell again the ghosts told RETELL_SECONDS ago whose position is still open (their workflow
        was settling its open when the hint came); forget those that are final."""
        now = time.monotonic()
        due = [pid for pid, ghost in run.unconfirmed.items() if now - ghost.told_at >= RETELL_SECONDS]
        if not due:
            return
        async with self.deps.engine.connect() as conn:
            status = dict(
                (await conn.execute(select(positions.c.id, positions.c.status).where(positions.c.id.in_(due)))).all()
            )
        for pid in due:
            ghost = run.unconfirmed[pid]
            if status.get(pid) != "open":
                del run.unconfirmed[pid]  # closing or closed: the hint was taken (or another path won)
            elif ghost.retold >= MAX_RETELLS:
                del run.unconfirmed[pid]
                log.warning(
                    "%s/%s: %s still open after %d stream hints; leaving it to the REST sync",
                    run.exchange,
                    run.account,
                    ghost.position.workflow_id,
                    ghost.retold,
                )
            else:
                run.told.pop(pid, None)
                ghost.retold += 1
                await self._tell(run, ghost.position, ghost.hint)

    # ------------------------------------------------------------ events
    async def _handle(self, run: _Run, event: PositionUpdate | OrderUpdate) -> None:
        run.events += 1
        now = datetime.now(UTC)
        lag = max(0.0, now.timestamp() - event.at_ms / 1000)
        run.last_event_at, run.lag_ms = now, int(lag * 1000)
        metrics.STREAM_EVENT_LAG.labels(run.exchange.value).observe(lag)
        kind = "position" if isinstance(event, PositionUpdate) else "order"
        metrics.STREAM_EVENTS.labels(run.exchange.value, run.account, kind).inc()
        if isinstance(event, PositionUpdate):
            await self._position_update(run, event)
        else:
            await self._order_update(run, event)
        if run.events % 20 == 1:
            await self._write_status(run, connected=True)

    async def _position_update(self, run: _Run, event: PositionUpdate) -> None:
        """Compare the venue's position in the symbol with our OPEN positions there."""
        async with self.deps.engine.connect() as conn:
            ours = [
                p
                for p in await mdb.account_positions(conn, run.exchange.value, run.account)
                if p.symbol == event.symbol and p.status == "open"
            ]
        if not ours:
            return
        gateway = await gateway_for(self.deps, run.exchange, run.account)
        step = (await gateway.market(event.symbol)).amount_step
        for position in ours:
            if event.quantity == 0 or event.side is None or event.side.value != position.side:
                await self._tell(run, position, SyncHint(kind="ghost"))
            elif quantities_differ(position.open_quantity, event.quantity, step):
                await self._tell(run, position, SyncHint(kind="quantity_drift", observed_quantity=event.quantity))

    async def _order_update(self, run: _Run, event: OrderUpdate) -> None:
        """A fill of one of our own orders is recorded at once (idempotent, through the intent rule)."""
        if event.filled <= 0 or event.average_price is None or not event.client_order_id.startswith("eg"):
            return
        async with self.deps.engine.connect() as conn:
            row = (
                (await conn.execute(select(orders).where(orders.c.client_order_id == event.client_order_id)))
                .mappings()
                .one_or_none()
            )
        if (
            row is None
            or row["status"] not in ("pending", "partially_filled")
            or row["filled_quantity"] >= event.filled
        ):
            return
        if event.filled > row["quantity"]:
            return  # not a report we can apply (the venue capped or changed it): the order activity settles it
        try:
            await self.deps.store.record_fill(
                row["id"],
                db.FillReport(event.exchange_order_id, event.filled, event.average_price),
                actor=f"stream:{run.exchange.value}/{run.account}",
            )
        except EgisError as exc:
            log.warning("stream fill of %s not recorded: %s", event.client_order_id, exc)

    async def _tell(self, run: _Run, position: OurPosition, hint: SyncHint) -> bool:
        """Signal the hint to the position's workflow, once per (position, hint); False when it was
        already told (or the position has no workflow)."""
        key = hint.kind if hint.observed_quantity is None else f"{hint.kind}:{hint.observed_quantity}"
        if run.told.get(position.position_id) == key or position.workflow_id is None:
            return False
        run.told[position.position_id] = key
        if hint.kind == "ghost":  # followed up until its position is no longer open (_retell)
            ghost = run.unconfirmed.setdefault(position.position_id, _Unconfirmed(position, hint, time.monotonic()))
            ghost.told_at = time.monotonic()
        run.reported = remember(run.reported, position.position_id)
        await self._write_status(run, connected=True)  # before the signal: the sync must see it reported
        assert self.deps.temporal is not None, "the stream activity needs a Temporal client"
        try:
            await self.deps.temporal.get_workflow_handle(position.workflow_id).signal("sync_hint", hint)
        except Exception as exc:
            log.info("could not signal %s: %s", position.workflow_id, exc)
        log.info("%s/%s: stream -> %s %s", run.exchange, run.account, position.workflow_id, key)
        return True

    # ------------------------------------------------------------ the REST safety net
    async def _gap_fill(self, run: _Run, why: str) -> None:
        """ONE positions request, diffed against the database (the exchange-sync rule)."""
        try:
            findings = await compare_account(self.deps, run.exchange, run.account)
        except ExchangeCallError as exc:
            log.warning("%s/%s: gap-fill read failed (%s): the REST sync will cover", run.exchange, run.account, exc)
            return
        found = 0
        for ghost in findings.ghosts:
            found += await self._tell(run, ghost, SyncHint(kind="ghost"))
        for drift in findings.drifts:
            hint = SyncHint(kind="quantity_drift", observed_quantity=drift.exchange_quantity)
            found += await self._tell(run, drift.position, hint)
        if found:
            run.gap_fill_findings += found
            metrics.STREAM_GAP_FILL_FINDINGS.labels(run.exchange.value, run.account).inc(found)
            log.warning(
                "%s/%s: gap-fill (%s) found %d the stream had not delivered", run.exchange, run.account, why, found
            )

    # ------------------------------------------------------------ status
    async def _write_status(self, run: _Run, *, connected: bool) -> None:
        values = {
            "connected": connected,
            "connected_since": run.connected_since if connected else None,
            "last_event_at": run.last_event_at,
            "lag_ms": run.lag_ms,
            "worker": _worker_identity(),
            "last_error": run.last_error,
            "reported": run.reported,
            "updated_at": func.now(),
        }
        reconnects, events = run.new_since_written("reconnects"), run.new_since_written("events")
        statement = pg_insert(stream_status).values(
            exchange=run.exchange.value, account=run.account, reconnects=reconnects, events=events, **values
        )
        statement = statement.on_conflict_do_update(
            index_elements=[stream_status.c.exchange, stream_status.c.account],
            set_={
                **values,
                "reconnects": stream_status.c.reconnects + reconnects,
                "events": stream_status.c.events + events,
            },
        )
        async with self.deps.engine.begin() as conn:
            await conn.execute(statement)


def _wants_stream(deps: Deps, request: AccountInput) -> bool:
    """EGIS_STREAMS=0, or `"stream": false` in the account file: REST polling only."""
    try:
        return load_account(request.account, request.exchange, deps.settings.resolved_accounts_dir).stream
    except EgisError:
        return True  # no credentials yet: keep trying (the run reports the error)


def _worker_identity() -> str:
    with contextlib.suppress(Exception):
        return activity.info().task_queue + "@" + os.uname().nodename + f"/{os.getpid()}"
    return f"{os.getpid()}"


async def _heartbeat() -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(HEARTBEAT_SECONDS)
