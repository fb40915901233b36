"""`egis replay`: the deploy gate. Replays what the cluster is running against the code on disk.

Downloads the histories of the Egis workflows that are running, and of those closed within the
last hours (bounded count), from the cluster this process is configured for, and replays each
with `temporalio.worker.Replayer` against `workflows.registry.ALL_WORKFLOWS` (or the workflows
given). A history the new code cannot replay means the change would break those workflows
(AUTO_UPGRADE ones move to the new version at their next task): the gate fails, one line per
failing workflow, and the new version is not made current (docs/operations.md, "Safe deploys").
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError
from temporalio.client import Client, WorkflowExecution, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

DEFAULT_CLOSED_WITHIN_HOURS = 24
DEFAULT_LIMIT = 1000


@dataclass(frozen=True)
class ReplayOutcome:
    workflow_id: str
    run_id: str
    workflow_type: str
    status: str  # running | completed | failed | ... (the execution's)
    verdict: str  # ok | nondeterminism | failed
    message: str = ""

    def line(self) -> str:
        what = "NONDETERMINISM" if self.verdict == "nondeterminism" else "REPLAY FAILED"
        return f"{what} {self.workflow_type} {self.workflow_id} (run {self.run_id}, {self.status}): {self.message}"


@dataclass
class ReplayReport:
    query: str
    limit: int
    outcomes: list[ReplayOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.verdict == "ok" for o in self.outcomes)

    @property
    def failures(self) -> list[ReplayOutcome]:
        return [o for o in self.outcomes if o.verdict != "ok"]

    @property
    def truncated(self) -> bool:
        return len(self.outcomes) >= self.limit

    def rows(self) -> list[dict[str, object]]:
        """One row per workflow type: replayed, ok, nondeterministic, other failures."""
        by_type: dict[str, dict[str, object]] = {}
        for o in self.outcomes:
            row = by_type.setdefault(
                o.workflow_type,
                {"workflow_type": o.workflow_type, "replayed": 0, "ok": 0, "nondeterminism": 0, "failed": 0},
            )
            row["replayed"] = int(row["replayed"]) + 1  # type: ignore[call-overload]
            row[o.verdict] = int(row[o.verdict]) + 1  # type: ignore[call-overload]
        return [by_type[k] for k in sorted(by_type)]


def scope_query(
    workflow_types: Sequence[str],
    *,
    query: str | None = None,
    closed_within_hours: float = DEFAULT_CLOSED_WITHIN_HOURS,
    now: datetime | None = None,
) -> str:
    """The visibility query: these workflow types, and either `query` or (running, or closed
    within the last `closed_within_hours` hours)."""
    types = ", ".join(f"'{name}'" for name in workflow_types)
    if query:
        scope = query
    else:
        since = (now or datetime.now(UTC)) - timedelta(hours=closed_within_hours)
        scope = f"ExecutionStatus = 'Running' OR CloseTime > '{since.strftime('%Y-%m-%dT%H:%M:%SZ')}'"
    return f"WorkflowType IN ({types}) AND ({scope})"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


async def replay_cluster(
    client: Client,
    *,
    query: str | None = None,
    closed_within_hours: float = DEFAULT_CLOSED_WITHIN_HOURS,
    limit: int = DEFAULT_LIMIT,
    workflows: Sequence[type] | None = None,
) -> ReplayReport:
    """Replay the cluster's histories (see `scope_query`) against `workflows` (default: every
    workflow the worker registers). Never raises for a replay failure: the report has them."""
    if workflows is None:
        from workflows.registry import ALL_WORKFLOWS

        workflows = ALL_WORKFLOWS
    names = sorted({getattr(w, "__temporal_workflow_definition").name for w in workflows})
    full_query = scope_query(names, query=query, closed_within_hours=closed_within_hours)
    report = ReplayReport(full_query, limit)
    executions: list[WorkflowExecution] = []

    async def histories() -> AsyncIterator[WorkflowHistory]:
        async for execution in client.list_workflows(full_query, limit=limit):
            executions.append(execution)
            handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
            yield await handle.fetch_history()

    replayer = Replayer(
        workflows=list(workflows),
        data_converter=pydantic_data_converter,
        workflow_failure_exception_types=[ValidationError],
    )
    async with replayer.workflow_replay_iterator(histories()) as results:
        index = 0
        async for result in results:
            execution = executions[index]
            index += 1
            failure = result.replay_failure
            if failure is None:
                verdict, message = "ok", ""
            elif isinstance(failure, NondeterminismError):
                verdict, message = "nondeterminism", first_line(failure)
            else:
                verdict, message = "failed", f"{type(failure).__name__}: {first_line(failure)}"
            status = execution.status.name.lower() if execution.status is not None else "unknown"
            report.outcomes.append(
                ReplayOutcome(execution.id, execution.run_id, execution.workflow_type, status, verdict, message)
            )
    return report
