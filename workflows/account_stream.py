"""AccountStreamWorkflow: one private stream per live exchange account, however many workers run.

The fixed workflow id (`stream-<queue>-<exchange>-<account>`) makes it unique; it runs the
long-lived, heartbeating `account_stream` activity on the account's task queue, over and over.
A worker that dies loses the activity to another worker within the heartbeat timeout. History
stays small: one activity per hour, continue-as-new when Temporal suggests it. Deterministic
orchestration only.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, VersioningBehavior
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from egis.models import AccountInput, StreamRunReport, account_task_queue

HEARTBEAT_TIMEOUT = timedelta(seconds=10)
RETRY = RetryPolicy(
    # above the heartbeat timeout: a zombie attempt on a stalled worker has given up before the
    # next one starts (Temporal community forum 934), so two never hold the stream for long
    initial_interval=timedelta(seconds=11),
    backoff_coefficient=1.5,
    maximum_interval=timedelta(seconds=60),
)
"""Unlimited attempts: the stream must come back whatever happened (credentials fixed, venue back)."""


@workflow.defn(versioning_behavior=VersioningBehavior.AUTO_UPGRADE)  # runs for good, continues-as-new
class AccountStreamWorkflow:
    @workflow.run
    async def run(self, request: AccountInput) -> None:
        queue = account_task_queue(workflow.info().task_queue, request.exchange, request.account)
        while True:
            try:
                report = await workflow.execute_activity(
                    "account_stream",
                    request,
                    result_type=StreamRunReport,
                    task_queue=queue,
                    start_to_close_timeout=timedelta(hours=2),
                    heartbeat_timeout=HEARTBEAT_TIMEOUT,
                    retry_policy=RETRY,
                )
            except ActivityError:  # cancelled, or failed for good: pause, then follow again
                await workflow.sleep(timedelta(seconds=60))
                continue
            if report.disabled:  # EGIS_STREAMS=0: the REST sync alone follows the account
                return
            if workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(request)


@workflow.defn(name="AccountStreamWorkflow")
class UnversionedAccountStreamWorkflow(AccountStreamWorkflow):
    """AccountStreamWorkflow for workers without a build id (workflows/registry.py says why)."""

    @workflow.run
    async def run(self, request: AccountInput) -> None:
        return await super().run(request)
