"""Worker Versioning: every worker of a process runs as one Worker Deployment Version.

- `EGIS_BUILD_ID` set: versioning is on. The version is (`EGIS_DEPLOYMENT_NAME`, default
  `egis`; `EGIS_BUILD_ID`), the same for the main queue's worker and every account queue's
  worker of the process (`deployment_config`). Each workflow type declares its behaviour
  (`@workflow.defn(versioning_behavior=...)`): the short jobs are PINNED, the long-running
  position and price-watch workflows AUTO_UPGRADE (they move to the current version at their
  next workflow task, so their changes must replay: `egis replay` is the gate).
- `EGIS_BUILD_ID` unset: no versioning (the embedded stack, the tests, the benchmarks): the
  workers are unversioned, as before. A build id is never invented from the code: a versioned
  worker receives nothing until its version is made current, so versioning must be a decision.

A new deployment has no current version: its first version makes itself current
(`promote_first_version`, on unless `EGIS_PROMOTE_FIRST_VERSION=false`), so a first
`docker compose up` runs without a manual step. Later versions never do: the operator makes
them current after the replay gate (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import logging

from temporalio.api.workflowservice.v1 import (
    DescribeWorkerDeploymentRequest,
    SetWorkerDeploymentCurrentVersionRequest,
)
from temporalio.client import Client
from temporalio.common import WorkerDeploymentVersion
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import WorkerDeploymentConfig

from egis.config import Settings

log = logging.getLogger("egis.versioning")

UNVERSIONED = "__unversioned__"


def deployment_version(settings: Settings) -> WorkerDeploymentVersion | None:
    """The process's Worker Deployment Version, or None when versioning is off (no build id)."""
    build_id = (settings.build_id or "").strip()
    if not build_id:
        return None
    return WorkerDeploymentVersion(deployment_name=settings.deployment_name, build_id=build_id)


def deployment_config(settings: Settings) -> WorkerDeploymentConfig | None:
    """`Worker(deployment_config=...)` for every worker of this process (None: unversioned)."""
    version = deployment_version(settings)
    if version is None:
        return None
    return WorkerDeploymentConfig(version=version, use_worker_versioning=True)


async def current_version(client: Client, deployment_name: str) -> tuple[str | None, bytes, set[str]]:
    """(current build id or None, conflict token, build ids known to the deployment)."""
    try:
        described = await client.workflow_service.describe_worker_deployment(
            DescribeWorkerDeploymentRequest(namespace=client.namespace, deployment_name=deployment_name)
        )
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None, b"", set()
        raise
    info = described.worker_deployment_info
    routing = info.routing_config
    current: str | None = None
    if routing.HasField("current_deployment_version") and routing.current_deployment_version.build_id:
        current = routing.current_deployment_version.build_id
    elif routing.current_version and routing.current_version != UNVERSIONED:  # older servers
        current = routing.current_version.split(".", 1)[-1]
    known = {v.deployment_version.build_id for v in info.version_summaries if v.HasField("deployment_version")}
    return current, described.conflict_token, known


async def promote_if_first(client: Client, version: WorkerDeploymentVersion, *, timeout: float = 60.0) -> bool:
    """Make `version` current when its deployment has no current version yet (a first deploy).

    Waits until the server knows the version (its workers poll). Several replicas may race:
    the conflict token lets one win; the others see a current version and stop. Returns True
    when this call made it current.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        current, token, known = await current_version(client, version.deployment_name)
        if current is not None:
            return False
        if version.build_id in known:
            try:
                await client.workflow_service.set_worker_deployment_current_version(
                    SetWorkerDeploymentCurrentVersionRequest(
                        namespace=client.namespace,
                        deployment_name=version.deployment_name,
                        build_id=version.build_id,
                        conflict_token=token,
                        identity="egis-worker (first version of the deployment)",
                    )
                )
                return True
            except RPCError as exc:  # another replica won, or the version is not fully registered yet
                log.debug("set current version: %s", exc)
        if asyncio.get_running_loop().time() > deadline:
            log.warning(
                "deployment %s has no current version and %s could not be made current; run: "
                "temporal worker deployment set-current-version --deployment-name %s --build-id %s",
                version.deployment_name,
                version.build_id,
                version.deployment_name,
                version.build_id,
            )
            return False
        await asyncio.sleep(0.5)
