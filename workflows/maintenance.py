"""Scheduled maintenance workflows (Temporal Schedules; `egis schedules install`), also run on
demand from the CLI.

- ExchangeSyncWorkflow (per exchange account, every 15 s): one positions request; ghosts and
  quantity drifts are signalled to their position workflows, which stay the only writers of
  their positions; orphans are reported, never adopted or closed.
- PaperReconcileWorkflow: `positions` against `paper_positions` (DB only), dry run unless
  `apply`; positions a repair closed are told.
- PhantomCleanupWorkflow: seed 000's phantom SHORTs, dry run unless `apply`; a match is
  repaired only when proven not real (never a position Egis opened itself; otherwise the
  account is read first and a short the exchange holds is left alone); the same.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, VersioningBehavior
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError, TimeoutType

with workflow.unsafe.imports_passed_through():
    from egis.models import (
        AccountInput,
        AccountPositions,
        Exchange,
        ExternalClose,
        MaintenanceInput,
        MaintenanceReport,
        SyncHint,
        SyncInput,
        SyncReport,
        account_task_queue,
    )

RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10), maximum_attempts=5)
READ_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=5), maximum_attempts=3
)


async def _tell(workflow_id: str, signal: str, payload: object) -> bool:
    """Signal a position workflow; False when it is not running (already finished, or none)."""
    try:
        await workflow.get_external_workflow_handle(workflow_id).signal(signal, payload)
        return True
    except Exception as exc:  # not found / already completed
        workflow.logger.info("could not signal %s: %s", workflow_id, exc)
        return False


@workflow.defn(versioning_behavior=VersioningBehavior.PINNED)
class ExchangeSyncWorkflow:
    @workflow.run
    async def run(self, request: SyncInput) -> SyncReport:
        report = await workflow.execute_activity(
            "sync_account",
            request,
            result_type=SyncReport,
            task_queue=account_task_queue(workflow.info().task_queue, request.exchange, request.account),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RETRY,
            summary=f"one positions request on {request.exchange.value}/{request.account}; diff with ours",
        )
        told, unmanaged = 0, []
        for ghost in report.ghosts:
            if ghost["workflow_id"] and await _tell(ghost["workflow_id"], "sync_hint", SyncHint(kind="ghost")):
                told += 1
            else:
                unmanaged.append(ghost["position_id"])
        for drift in report.drifts:
            hint = SyncHint(kind="quantity_drift", observed_quantity=drift["exchange"])
            if drift["workflow_id"] and await _tell(drift["workflow_id"], "sync_hint", hint):
                told += 1
            else:
                unmanaged.append(drift["position_id"])
        return report.model_copy(update={"told": told, "unmanaged": unmanaged})


async def _maintain(activity_name: str, request: MaintenanceInput, reason: str) -> MaintenanceReport:
    report = await workflow.execute_activity(
        activity_name,
        request,
        result_type=MaintenanceReport,
        # one transaction (seconds at 10,000 positions): a worker killed while it runs is seen
        # after this long and the run retried on another; 10 minutes had stalled every run behind it
        start_to_close_timeout=timedelta(seconds=60),
        retry_policy=RETRY,
        summary=f"{activity_name.replace('_', ' ')} ({'repair' if request.apply else 'dry run'})",
    )
    told = 0
    for workflow_id in report.to_tell:
        told += await _tell(workflow_id, "external_close", ExternalClose(reason=reason))
    return report.model_copy(update={"told": told})


@workflow.defn(versioning_behavior=VersioningBehavior.PINNED)
class PaperReconcileWorkflow:
    @workflow.run
    async def run(self, request: MaintenanceInput) -> MaintenanceReport:
        return await _maintain("reconcile_paper", request, "reconcile_paper")


async def _read_account(exchange: Exchange, account: str) -> AccountPositions:
    """One positions request on the account's queue; a failure is evidence too (nothing is repaired)."""
    try:
        return await workflow.execute_activity(
            "read_account_positions",
            AccountInput(exchange=exchange, account=account),
            result_type=AccountPositions,
            task_queue=account_task_queue(workflow.info().task_queue, exchange, account),
            schedule_to_start_timeout=timedelta(seconds=30),  # no worker serves the account: say so
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=READ_RETRY,
            summary=f"read the positions of {exchange.value}/{account} (is a candidate real?)",
        )
    except ActivityError as exc:
        cause = exc.cause
        if isinstance(cause, TimeoutError) and cause.type is TimeoutType.SCHEDULE_TO_START:
            why = "no worker serves this account's task queue (is a bot configured on it?)"
        else:
            why = cause.message if isinstance(cause, ApplicationError) else str(cause or exc)
        return AccountPositions(exchange=exchange, account=account, error=why[:200])


@workflow.defn(versioning_behavior=VersioningBehavior.PINNED)
class PhantomCleanupWorkflow:
    @workflow.run
    async def run(self, request: MaintenanceInput) -> MaintenanceReport:
        if workflow.patched("phantom-cleanup-reads-the-exchange"):
            # a match is repaired only when proven not real: read each account that holds one
            # Egis did not open itself (one positions request per account per run)
            accounts = await workflow.execute_activity(
                "phantom_accounts",
                request,
                result_type=list[str],
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=RETRY,
                summary="accounts holding a candidate Egis did not open itself",
            )
            reads = [await _read_account(Exchange.BINANCEUSDM, account) for account in accounts]
            request = request.model_copy(update={"exchange_reads": reads})
        return await _maintain("cleanup_phantom_shorts", request, "phantom_cleanup")


@workflow.defn(name="ExchangeSyncWorkflow")
class UnversionedExchangeSyncWorkflow(ExchangeSyncWorkflow):
    """ExchangeSyncWorkflow for workers without a build id (workflows/registry.py says why)."""

    @workflow.run
    async def run(self, request: SyncInput) -> SyncReport:
        return await super().run(request)


@workflow.defn(name="PaperReconcileWorkflow")
class UnversionedPaperReconcileWorkflow(PaperReconcileWorkflow):
    """PaperReconcileWorkflow for workers without a build id (workflows/registry.py says why)."""

    @workflow.run
    async def run(self, request: MaintenanceInput) -> MaintenanceReport:
        return await super().run(request)


@workflow.defn(name="PhantomCleanupWorkflow")
class UnversionedPhantomCleanupWorkflow(PhantomCleanupWorkflow):
    """PhantomCleanupWorkflow for workers without a build id (workflows/registry.py says why)."""

    @workflow.run
    async def run(self, request: MaintenanceInput) -> MaintenanceReport:
        return await super().run(request)
