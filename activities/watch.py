"""Activities behind the price watcher: batched aged-exit checks, and starting the watcher."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select
from temporalio import activity
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy

from activities.common import gateway_for, read_failure
from activities.deps import Deps
from egis.db.schema import bots, positions
from egis.exchanges.base import ExchangeCallError
from egis.models import (
    AgedCheckInput,
    AgedCheckResult,
    AgedPolicy,
    AgedTrigger,
    Side,
    WatcherInput,
    watcher_workflow_id,
)
from egis.rules.aged import aged_phase, target_price, target_reached

log = logging.getLogger("egis.activities.watch")


class WatchActivities:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self._starting: dict[str, asyncio.Task[None]] = {}  # watcher id -> the start in flight

    @activity.defn(name="check_aged_exits")
    async def check_aged_exits(self, request: AgedCheckInput) -> AgedCheckResult:
        """Which aged positions of this account reached their target? ONE tickers request for all."""
        query = (
            select(
                positions,
                bots.c.aged_max_age_s,
                bots.c.aged_grace_s,
                bots.c.aged_loss_step_pct,
                bots.c.aged_max_loss_pct,
                bots.c.aged_expire_s,
            )
            .join(bots, bots.c.name == positions.c.bot)
            .where(
                positions.c.exchange == request.exchange.value,
                positions.c.account == request.account,
                positions.c.status == "open",
                positions.c.opened_at.is_not(None),
                bots.c.aged_max_age_s.is_not(None),
            )
        )
        async with self.deps.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        watched: list[tuple[dict, str, object]] = []  # type: ignore[type-arg]
        triggers: list[AgedTrigger] = []
        for row in rows:
            policy = AgedPolicy(
                max_age_s=row["aged_max_age_s"],
                grace_s=row["aged_grace_s"],
                loss_step_pct=row["aged_loss_step_pct"],
                max_loss_pct=row["aged_max_loss_pct"],
                expire_s=row["aged_expire_s"],
            )
            phase = aged_phase(policy, (request.now - row["opened_at"]).total_seconds())
            if phase.phase == "none":
                continue
            if phase.closes_at_market:
                triggers.append(
                    AgedTrigger(
                        workflow_id=row["workflow_id"],
                        position_id=row["id"],
                        phase=phase.phase,
                        price=None,
                        target=None,
                    )
                )
                continue
            assert phase.loss_pct is not None and row["entry_price"] is not None
            watched.append(
                (dict(row), phase.phase, target_price(row["entry_price"], Side(row["side"]), phase.loss_pct))
            )
        requests = 0
        if watched:
            gateway = await gateway_for(self.deps, request.exchange, request.account)
            try:
                prices = await gateway.fetch_tickers(sorted({row["symbol"] for row, _, _ in watched}))
            except ExchangeCallError as exc:
                raise read_failure(exc) from None
            requests = 1
            for row, phase_name, target in watched:
                price = prices.get(row["symbol"])
                if price is not None and target_reached(Side(row["side"]), price, target):  # type: ignore[arg-type]
                    log.info(
                        "%s %s: aged target reached (%s): current=%s vs target=%s",
                        row["workflow_id"],
                        row["symbol"],
                        phase_name,
                        price,
                        target,
                    )
                    triggers.append(
                        AgedTrigger(
                            workflow_id=row["workflow_id"],
                            position_id=row["id"],
                            phase=phase_name,
                            price=price,
                            target=target,
                        )
                    )  # type: ignore[arg-type]
        expired = sum(1 for t in triggers if t.price is None)
        return AgedCheckResult(watched=len(watched) + expired, triggers=triggers, tickers_requests=requests)

    @activity.defn(name="ensure_price_watcher")
    async def ensure_price_watcher(self, request: WatcherInput) -> str:
        """Start the account's PriceWatchWorkflow, or tell the running one to keep watching (idempotent)."""
        client: Client | None = self.deps.temporal
        if client is None:
            raise RuntimeError("the worker was built without a Temporal client")
        queue = activity.info().task_queue
        workflow_id = watcher_workflow_id(queue, request.exchange, request.account)
        # Hundreds of positions of one account can age at once: the ensures running together in
        # this process share one start call (Temporal answers "Workflow is busy" to concurrent
        # starts of one id). Nothing is remembered after it: a watcher that ends later is started
        # again by the next ensure.
        start = self._starting.get(workflow_id)
        if start is None:
            start = asyncio.create_task(self._start_watcher(client, request, workflow_id, queue))
            self._starting[workflow_id] = start
            start.add_done_callback(lambda _: self._starting.pop(workflow_id, None))
        await asyncio.shield(start)
        return workflow_id

    async def _start_watcher(self, client: Client, request: WatcherInput, workflow_id: str, queue: str) -> None:
        """Signal-with-start: a running watcher gets the `watch` signal (it resets its idle count, so
        one in its last idle tick keeps going), an ended one is started again."""
        await client.start_workflow(
            "PriceWatchWorkflow",
            request.model_copy(update={"tick_seconds": self.deps.settings.watch_tick_seconds}),
            id=workflow_id,
            task_queue=queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            start_signal="watch",
        )
