"""HealthWorkflow: proves the worker, the database and Temporal are wired together."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import VersioningBehavior

with workflow.unsafe.imports_passed_through():
    from egis.models import HealthReport


@workflow.defn(versioning_behavior=VersioningBehavior.PINNED)
class HealthWorkflow:
    @workflow.run
    async def run(self) -> HealthReport:
        return await workflow.execute_activity(
            "health_check",
            result_type=HealthReport,
            start_to_close_timeout=timedelta(seconds=30),
            summary="database round trip from the worker",
        )


@workflow.defn(name="HealthWorkflow")
class UnversionedHealthWorkflow(HealthWorkflow):
    """HealthWorkflow for workers without a build id (workflows/registry.py says why)."""

    @workflow.run
    async def run(self) -> HealthReport:
        return await super().run()
