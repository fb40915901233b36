"""The same workflows, for unversioned workers (no `EGIS_BUILD_ID`: the embedded stack, tests).

A worker without a Worker Deployment Version may not report a versioning behaviour: the server
refuses the workflow task ("versioning behavior cannot be specified without deployment options
being set with versioned mode"), and the Python SDK reports the one declared in
`@workflow.defn`. So unversioned workers register these twins: the same classes and code under
the same workflow names, minus the behaviour. They are real module-level classes because the
sandbox re-imports each workflow class by module and name. Histories are the same either way.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from egis.models import (
        AccountInput,
        HealthReport,
        MaintenanceInput,
        MaintenanceReport,
        PositionResult,
        PositionWorkflowInput,
        SyncInput,
        SyncReport,
        WatcherInput,
    )
    from workflows.account_stream import AccountStreamWorkflow
    from workflows.health import HealthWorkflow
    from workflows.maintenance import ExchangeSyncWorkflow, PaperReconcileWorkflow, PhantomCleanupWorkflow
    from workflows.position import PositionWorkflow
    from workflows.price_watch import PriceWatchWorkflow


@workflow.defn(name="HealthWorkflow")
class UnversionedHealthWorkflow(HealthWorkflow):
    @workflow.run
    async def run(self) -> HealthReport:
        return await super().run()


@workflow.defn(name="PositionWorkflow")
class UnversionedPositionWorkflow(PositionWorkflow):
    @workflow.init
    def __init__(self, state: PositionWorkflowInput) -> None:
        super().__init__(state)

    @workflow.run
    async def run(self, state: PositionWorkflowInput) -> PositionResult:
        return await super().run(state)


@workflow.defn(name="PriceWatchWorkflow")
class UnversionedPriceWatchWorkflow(PriceWatchWorkflow):
    @workflow.run
    async def run(self, state: WatcherInput) -> int:
        return await super().run(state)


@workflow.defn(name="ExchangeSyncWorkflow")
class UnversionedExchangeSyncWorkflow(ExchangeSyncWorkflow):
    @workflow.run
    async def run(self, request: SyncInput) -> SyncReport:
        return await super().run(request)


@workflow.defn(name="PaperReconcileWorkflow")
class UnversionedPaperReconcileWorkflow(PaperReconcileWorkflow):
    @workflow.run
    async def run(self, request: MaintenanceInput) -> MaintenanceReport:
        return await super().run(request)


@workflow.defn(name="PhantomCleanupWorkflow")
class UnversionedPhantomCleanupWorkflow(PhantomCleanupWorkflow):
    @workflow.run
    async def run(self, request: MaintenanceInput) -> MaintenanceReport:
        return await super().run(request)


@workflow.defn(name="AccountStreamWorkflow")
class UnversionedAccountStreamWorkflow(AccountStreamWorkflow):
    @workflow.run
    async def run(self, request: AccountInput) -> None:
        return await super().run(request)
