"""Safe deploys on the dev server (Server 1.32, which has Worker Deployments): a rollout from
build A to build B with the real worker code (worker.py's main worker and account workers,
versioned from the settings), the real `temporal` CLI making B current, and the replay gate
(`egis replay`) passing a compatible change and stopping an incompatible one."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from temporalio.api.deployment.v1 import WorkerDeploymentVersion as DeploymentVersionProto
from temporalio.api.enums.v1 import VersioningBehavior as VersioningBehaviorProto
from temporalio.api.workflowservice.v1 import DescribeWorkerDeploymentVersionRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkerDeploymentVersion
from temporalio.testing import WorkflowEnvironment

from activities.deps import Deps
from egis import cli, versioning
from egis.client import EgisClient
from egis.config import Settings
from egis.models import BotSpec, CloseRequest, Exchange, OpenPositionInput, account_task_queue
from egis.queues import queue_rate_limit
from egis.replay import replay_cluster, scope_query
from egis.stack.processes import find_binary
from tests.conftest import ACCOUNTS
from tests.lifecycle import eventually
from tests.workflow_variants import PositionWorkflowB, PositionWorkflowIncompatible
from worker import AccountWorkers, build_main_worker
from workflows.registry import ALL_WORKFLOWS

D = Decimal
BUILD_B_WORKFLOWS = [PositionWorkflowB if w.__name__ == "PositionWorkflow" else w for w in ALL_WORKFLOWS]


def test_versioning_is_off_without_a_build_id_and_the_same_for_every_worker_with_one() -> None:
    assert versioning.deployment_config(Settings(build_id=None)) is None
    assert versioning.deployment_config(Settings(build_id="  ")) is None
    config = versioning.deployment_config(Settings(build_id="1.4.0", deployment_name="egis"))
    assert config is not None and config.use_worker_versioning
    assert config.version == WorkerDeploymentVersion("egis", "1.4.0")


def test_every_workflow_declares_its_versioning_behavior() -> None:
    from temporalio.common import VersioningBehavior

    behaviors = {w.__name__: w.__temporal_workflow_definition.versioning_behavior for w in ALL_WORKFLOWS}  # type: ignore[attr-defined]
    assert behaviors == {
        "HealthWorkflow": VersioningBehavior.PINNED,
        "PositionWorkflow": VersioningBehavior.AUTO_UPGRADE,
        "PriceWatchWorkflow": VersioningBehavior.AUTO_UPGRADE,
        "AccountStreamWorkflow": VersioningBehavior.AUTO_UPGRADE,
        "ExchangeSyncWorkflow": VersioningBehavior.PINNED,
        "PaperReconcileWorkflow": VersioningBehavior.PINNED,
        "PhantomCleanupWorkflow": VersioningBehavior.PINNED,
    }


def test_the_default_scope_is_running_or_recently_closed_egis_workflows() -> None:
    from datetime import UTC, datetime

    q = scope_query(["A", "B"], closed_within_hours=2, now=datetime(2025, 1, 1, 12, tzinfo=UTC))
    assert q == "WorkflowType IN ('A', 'B') AND (ExecutionStatus = 'Running' OR CloseTime > '2025-01-01T10:00:00Z')"
    assert scope_query(["A"], query="WorkflowId = 'x'") == "WorkflowType IN ('A') AND (WorkflowId = 'x')"


@contextlib.asynccontextmanager
async def build(temporal: Client, deps: Deps, workflows: list[type] | None = None) -> AsyncIterator[None]:
    """One worker process's workers, as worker.py builds them: the main queue and one worker per
    account queue, all with the deployment version of `deps.settings`."""
    accounts = AccountWorkers(temporal, deps)
    try:
        async with build_main_worker(temporal, deps, workflows):
            await accounts.discover()
            yield
    finally:
        await accounts.shutdown()


async def version_queues(temporal: Client, deployment: str, build_id: str) -> set[tuple[str, int]]:
    """The (task queue, type) pairs a Worker Deployment Version's workers poll."""
    described = await temporal.workflow_service.describe_worker_deployment_version(
        DescribeWorkerDeploymentVersionRequest(
            namespace=temporal.namespace,
            deployment_version=DeploymentVersionProto(deployment_name=deployment, build_id=build_id),
        )
    )
    return {(q.name, q.type) for q in described.worker_deployment_version_info.task_queue_infos}


async def versioning_info(temporal: Client, workflow_id: str) -> tuple[int, str]:
    described = await temporal.get_workflow_handle(workflow_id).describe()
    info = described.raw_description.workflow_execution_info.versioning_info
    return info.behavior, info.deployment_version.build_id


async def test_rollout_from_build_a_to_build_b_and_the_replay_gate(
    temporal_env: WorkflowEnvironment, deps: Deps, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    temporal = temporal_env.client
    tag = uuid.uuid4().hex[:8]
    settings = deps.settings.model_copy(
        update={"task_queue": f"t-{tag}", "deployment_name": f"egis-{tag}", "auto_schedules": False}
    )
    deps_a = Deps.build(settings.model_copy(update={"build_id": "A"}), deps.engine, temporal)
    deps_b = Deps.build(settings.model_copy(update={"build_id": "B"}), deps.engine, temporal)
    client = EgisClient(settings, deps.engine, temporal)
    bots = {}
    for exchange in (Exchange.BYBIT, Exchange.PAPER):
        bots[exchange] = f"v{exchange.value[:3]}-{tag}"
        spec = BotSpec(name=bots[exchange], exchange=exchange, account=ACCOUNTS[exchange.value], budget_usd=D(1000))
        await client.create_bot(spec, actor="test")

    builds = contextlib.AsyncExitStack()
    a = contextlib.AsyncExitStack()
    try:
        # ---- build A: the first version of the deployment makes itself current, opens positions
        await a.enter_async_context(build(temporal, deps_a))
        version_a = WorkerDeploymentVersion(settings.deployment_name, "A")
        assert await versioning.promote_if_first(temporal, version_a)
        assert (await versioning.current_version(temporal, settings.deployment_name))[0] == "A"
        # the account queues' rate limits are set on the cluster, from the exchanges' limits (80 %)
        bybit_queue = account_task_queue(settings.task_queue, Exchange.BYBIT, ACCOUNTS["bybit"])
        assert await queue_rate_limit(temporal, bybit_queue) == 8.0
        paper_queue = account_task_queue(settings.task_queue, Exchange.PAPER, ACCOUNTS["paper"])
        assert await queue_rate_limit(temporal, paper_queue) is None

        views = []
        for exchange, bot in bots.items():
            request = OpenPositionInput(bot=bot, symbol="BTCUSDT", side="long", usd=D(120), ref=f"v-{tag}")
            view = await client.open_position(request, wait=30)
            assert view.status == "open", (exchange, view)
            views.append(view)
        ids = [v.workflow_id for v in views]
        for workflow_id in ids:
            assert await versioning_info(temporal, workflow_id) == (
                VersioningBehaviorProto.VERSIONING_BEHAVIOR_AUTO_UPGRADE,
                "A",
            )
        in_ids = "WorkflowId IN (" + ", ".join(f"'{i}'" for i in ids) + ")"

        # ---- the gate, before B becomes current: B's code replays what A is running
        gate = await replay_cluster(temporal, query=in_ids, workflows=BUILD_B_WORKFLOWS)
        assert gate.ok and len(gate.outcomes) == len(ids), gate.failures

        # ---- build B starts, is made current with the real CLI, A is stopped (drained)
        await builds.enter_async_context(build(temporal, deps_b, BUILD_B_WORKFLOWS))

        async def b_polls_what_a_polls() -> bool:  # else set-current-version refuses: missing task queues
            if "B" not in (await versioning.current_version(temporal, settings.deployment_name))[2]:
                return False
            a_queues = await version_queues(temporal, settings.deployment_name, "A")
            return a_queues <= await version_queues(temporal, settings.deployment_name, "B")

        assert await eventually(b_polls_what_a_polls, timeout=60)
        address = temporal.service_client.config.target_host
        done = await asyncio.to_thread(
            subprocess.run,
            [
                str(find_binary("temporal")),
                "worker",
                "deployment",
                "set-current-version",
                "--address",
                address,
                "--namespace",
                temporal.namespace,
                "--deployment-name",
                settings.deployment_name,
                "--build-id",
                "B",
                "--yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert (await versioning.current_version(temporal, settings.deployment_name))[0] == "B"
        await a.aclose()  # no worker of build A is left

        # ---- every position still closes correctly, on build B (AUTO_UPGRADE)
        for view in views:
            result = await asyncio.wait_for(
                client.close_position(view.workflow_id, CloseRequest(reason="manual")), timeout=60
            )
            assert result is not None and result.status == "closed" and result.exit_reason == "manual", result
            row = await client.store.get_position(view.position_id)
            assert row["status"] == "closed" and row["exit_reason"] == "manual"
        for workflow_id in ids:
            handle = temporal.get_workflow_handle(workflow_id)
            described = await handle.describe()
            assert described.status == WorkflowExecutionStatus.COMPLETED
            assert (await described.memo_value("build")) == "B"  # B's code ran the close
            assert (await versioning_info(temporal, workflow_id))[1] == "B"

        # ---- the default scope (running, or closed within 24 h) is a query the server accepts
        names = [w.__temporal_workflow_definition.name for w in ALL_WORKFLOWS]  # type: ignore[attr-defined]
        assert (await temporal.count_workflows(scope_query(names))).count >= len(ids)

        # ---- the gate after the fact: B still replays; an unpatched change is caught, per workflow
        assert (await replay_cluster(temporal, query=in_ids, workflows=BUILD_B_WORKFLOWS)).ok
        bad = await replay_cluster(temporal, query=in_ids, workflows=[PositionWorkflowIncompatible])
        assert not bad.ok and sorted(f.workflow_id for f in bad.failures) == sorted(ids)
        assert all(f.verdict == "nondeterminism" for f in bad.failures), bad.failures
        assert all("Nondeterminism" in f.message and "Activity" in f.message for f in bad.failures), bad

        # ---- `egis replay` itself: a table, a line per failing workflow, and the exit code
        monkeypatch.setenv("TEMPORAL_ADDRESS", address)
        monkeypatch.setenv("TEMPORAL_NAMESPACE", temporal.namespace)
        monkeypatch.setenv("EGIS_DATA_DIR", str(settings.data_dir))
        monkeypatch.setattr("workflows.registry.ALL_WORKFLOWS", [PositionWorkflowIncompatible])
        code = await asyncio.to_thread(cli.main, ["replay", "--query", in_ids])
        out = capsys.readouterr().out
        assert code == cli.EXIT_REFUSED, out
        assert out.count("NONDETERMINISM PositionWorkflow pos-") == len(ids), out
        assert f"FAILED: {len(ids)} of {len(ids)}" in out, out
        monkeypatch.setattr("workflows.registry.ALL_WORKFLOWS", BUILD_B_WORKFLOWS)
        code = await asyncio.to_thread(cli.main, ["replay", "--query", in_ids])
        out = capsys.readouterr().out
        assert code == cli.EXIT_OK and f"OK: {len(ids)} histories replay" in out, out
        assert re.search(rf"PositionWorkflow +{len(ids)} +{len(ids)} +0 +0", out), out  # the table's row
    finally:
        await a.aclose()
        await builds.aclose()
        await deps_a.gateways.close()
        await deps_b.gateways.close()
