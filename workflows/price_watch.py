"""PriceWatchWorkflow: one per exchange account, started when a position there becomes aged.

Each tick runs ONE activity that reads the account's aged positions, computes each one's phase
and target (egis.rules.aged), fetches all their prices in ONE tickers request, and returns
the positions whose target is reached; the watcher signals those workflows. It sleeps on a
durable timer between ticks, continues-as-new to keep history bounded, and ends after a
while with nothing to watch (the next aged position starts it again).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, VersioningBehavior

with workflow.unsafe.imports_passed_through():
    from egis.models import AgedCheckInput, AgedCheckResult, ExitTrigger, WatcherInput, account_task_queue

IDLE_TICKS_BEFORE_EXIT = 12


@workflow.defn(versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class PriceWatchWorkflow:
    """Long-running (continues as new): AUTO_UPGRADE, so its changes must replay (`egis replay`)."""

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
            result = await workflow.execute_activity(
                "check_aged_exits",
                AgedCheckInput(exchange=state.exchange, account=state.account, now=workflow.now()),
                result_type=AgedCheckResult,
                task_queue=queue,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30), maximum_attempts=3),
                summary=f"aged positions of {where}: phases, targets, one tickers request",
            )
            for trigger in result.triggers:
                handle = workflow.get_external_workflow_handle(trigger.workflow_id)
                try:
                    await handle.signal("exit_trigger", ExitTrigger(phase=trigger.phase, price=trigger.price))
                    triggered += 1
                except Exception as exc:  # the position finished meanwhile: nothing to tell
                    workflow.logger.info("exit trigger for %s not delivered: %s", trigger.workflow_id, exc)
            idle = idle + 1 if result.watched == 0 else 0
            await workflow.sleep(timedelta(seconds=state.tick_seconds), summary="until the next tick")
            if workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(state.model_copy(update={"idle_ticks": idle}))
        return triggered


@workflow.defn(name="PriceWatchWorkflow")
class UnversionedPriceWatchWorkflow(PriceWatchWorkflow):
    """PriceWatchWorkflow for workers without a build id (workflows/registry.py says why)."""

    @workflow.run
    async def run(self, state: WatcherInput) -> int:
        return await super().run(state)
