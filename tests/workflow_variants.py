"""Test-only variants of PositionWorkflow, registered under the same name (tests/test_versioning.py).

- `PositionWorkflowB`: build B of a rollout, a compatible change: behind `workflow.patched`, its
  close marks the memo with the build that ran it (so the test can see who closed a position).
- `PositionWorkflowIncompatible`: build B plus a change made without a patch, the kind the
  replay gate must stop: it reads the position's row (activity `position_status`) before every
  close, so a history where `close_position` was scheduled there no longer replays.

Like the product's workflow modules, this one imports only temporalio and the workflows.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import VersioningBehavior

with workflow.unsafe.imports_passed_through():
    from egis.models import CloseRequest, CloseResult, PositionResult, PositionWorkflowInput
    from workflows.position import PositionWorkflow


@workflow.defn(name="PositionWorkflow", versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class PositionWorkflowB(PositionWorkflow):
    @workflow.init
    def __init__(self, state: PositionWorkflowInput) -> None:
        super().__init__(state)

    @workflow.run
    async def run(self, state: PositionWorkflowInput) -> PositionResult:
        return await super().run(state)

    async def _close(self, request: CloseRequest) -> None:
        # (a patch id is memoized per run: checked first where only new code can get, the close)
        if workflow.patched("test-build-b-marks-its-memo"):
            workflow.upsert_memo({"build": "B"})
        await super()._close(request)


@workflow.defn(name="PositionWorkflow", versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class PositionWorkflowIncompatible(PositionWorkflow):
    @workflow.init
    def __init__(self, state: PositionWorkflowInput) -> None:
        super().__init__(state)

    @workflow.run
    async def run(self, state: PositionWorkflowInput) -> PositionResult:
        return await super().run(state)

    async def _close(self, request: CloseRequest) -> None:
        if workflow.patched("test-build-b-marks-its-memo"):  # what build B does...
            workflow.upsert_memo({"build": "B"})
        await workflow.execute_activity(  # ...plus a change without a patch
            "position_status",
            self._s.position_id,
            result_type=CloseResult,
            start_to_close_timeout=timedelta(seconds=30),
        )
        await super()._close(request)
