"""PriceWatchWorkflow: one per exchange account, started when a position there becomes aged.

Each tick runs ONE activity that reads the account's aged positions, computes each one's phase
and target (egis.rules.aged), fetches all their prices in ONE tickers request, and returns
the positions whose target is reached; the watcher signals those workflows. It sleeps on a
durable timer between ticks, continues-as-new to keep history bounded, and ends after a
while with nothing to watch (the next aged position starts it again).

A position that ages starts it with signal-with-start (`ensure_price_watcher`): the `watch` signal
reaches a running watcher and resets its idle count, so a watcher in its last idle tick does not
end under a position that has just aged (Temporal does not let a workflow complete over a signal
it has not handled: the task is retried with the signal). A tick that fails after its retries is
logged and the next tick tries again: the watcher of an account never ends while it has aged
positions, which is what lets each position ask again only every few hours (WATCH_RECHECK).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, VersioningBehavior
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from egis.models import AgedCheckInput, AgedCheckResult, ExitTrigger, WatcherInput, account_task_queue

IDLE_TICKS_BEFORE_EXIT = 12
OUTLIVE_FAILED_TICK = "watcher-outlives-a-failed-tick"
"""Patch: a tick whose activity failed for good is logged and the watcher goes on (it failed)."""
TICK_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30), maximum_attempts=3)
AFTER_A_FAILED_TICK = timedelta(seconds=60)
"""The pause after a tick that failed (a venue that refuses our keys is not asked every 5 s)."""


@workflow.defn(versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class PriceWatchWorkflow:
    """Long-running (continues as new): AUTO_UPGRADE, so its changes must replay (`egis replay`)."""

    def __init__(self) -> None:
        self._asked = False

    @workflow.signal(
        name="watch",
        description="Internal, sent by `ensure_price_watcher` when a position of this account ages: "
        "keep watching (resets the idle count).",
    )
    def watch(self) -> None:
        self._asked = True

    @workflow.run
    async def run(self, state: WatcherInput) -> int:
        idle = state.idle_ticks
        queue = account_task_queue(workflow.info().task_queue, state.exchange, state.account)
        triggered = 0
        where = f"{state.exchange.value}/{state.account}"
        while idle < IDLE_TICKS_BEFORE_EXIT:
            workflow.set_current_details(
                f"**Price watcher of {where}**: one tickers request per tick, every {state.tick_seconds:g} s\n\n"
                f"exit triggers sent (this run): {triggered}; idle ticks: {idle} of {IDLE_TICKS_BEFORE_EXIT}"
            )
            try:
                result = await workflow.execute_activity(
                    "check_aged_exits",
                    AgedCheckInput(exchange=state.exchange, account=state.account, now=workflow.now()),
                    result_type=AgedCheckResult,
                    task_queue=queue,
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=TICK_RETRY,
                    summary=f"aged positions of {where}: phases, targets, one tickers request",
                )
            except ActivityError as exc:
                if not workflow.patched(OUTLIVE_FAILED_TICK):
                    raise
                # the account's venue is down or refusing: nothing is known, so nothing counts as idle
                workflow.logger.warning("price watcher of %s: a tick failed, the next one tries again: %s", where, exc)
                result = None
            for trigger in result.triggers if result is not None else []:
                handle = workflow.get_external_workflow_handle(trigger.workflow_id)
                try:
                    await handle.signal("exit_trigger", ExitTrigger(phase=trigger.phase, price=trigger.price))
                    triggered += 1
                except Exception as exc:  # the position finished meanwhile: nothing to tell
                    workflow.logger.info("exit trigger for %s not delivered: %s", trigger.workflow_id, exc)
            if result is not None:
                idle = idle + 1 if result.watched == 0 else 0
            pause = timedelta(seconds=state.tick_seconds) if result is not None else AFTER_A_FAILED_TICK
            await workflow.sleep(pause, summary="until the next tick")
            if self._asked:  # a position aged since the last check: it is watched from the next tick
                idle, self._asked = 0, False
            if workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(state.model_copy(update={"idle_ticks": idle}))
        return triggered


@workflow.defn(name="PriceWatchWorkflow")
class UnversionedPriceWatchWorkflow(PriceWatchWorkflow):
    """PriceWatchWorkflow for workers without a build id (workflows/registry.py says why)."""

    @workflow.run
    async def run(self, state: WatcherInput) -> int:
        return await super().run(state)
