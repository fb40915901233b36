"""An account queue's activity rate limit, set once on the cluster.

`Worker(max_task_queue_activities_per_second=...)` travels with every activity poll and the
server applies the last value it saw: replicas that disagree (an account file changed on one
host only) take turns. Server 1.28+ keeps a queue-wide limit of its own
(`UpdateTaskQueueConfig`, the RPC behind `temporal task-queue config set --queue-rps-limit`),
which overrides what pollers send. The worker sets it when it starts serving an account queue
(only when it differs: every replica computes the same value from the same account file), and
still passes the same value to its own Worker, so an older server that lacks the RPC gets the
same limit from the polls.
"""

from __future__ import annotations

import logging

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import RateLimit, TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest, UpdateTaskQueueConfigRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

log = logging.getLogger("egis.queues")

ACTIVITY = TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
REFUSED = (
    RPCStatusCode.UNIMPLEMENTED,
    RPCStatusCode.PERMISSION_DENIED,
    RPCStatusCode.INVALID_ARGUMENT,
    RPCStatusCode.FAILED_PRECONDITION,
)


async def queue_rate_limit(client: Client, queue: str) -> float | None:
    """The cluster-side activity rate limit of `queue` (None: none set)."""
    described = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=ACTIVITY, report_config=True
        )
    )
    config = described.config
    if config.HasField("queue_rate_limit") and config.queue_rate_limit.HasField("rate_limit"):
        return config.queue_rate_limit.rate_limit.requests_per_second
    return None


async def set_queue_rate_limit(client: Client, queue: str, per_second: float | None, reason: str) -> bool:
    """Make the cluster-side limit of `queue` `per_second` (None: unlimited). Returns True when it
    is in force on the cluster, False when the server refuses it for good (an older server, no
    permission: the per-worker value still applies); raises when the server is unreachable."""
    try:
        current = await queue_rate_limit(client, queue)
        if current == per_second or (
            current is not None and per_second is not None and abs(current - per_second) < 1e-3
        ):
            return True
        update = UpdateTaskQueueConfigRequest.RateLimitUpdate(reason=reason[:200])
        if per_second is not None:
            update.rate_limit.CopyFrom(RateLimit(requests_per_second=per_second))
        await client.workflow_service.update_task_queue_config(
            UpdateTaskQueueConfigRequest(
                namespace=client.namespace,
                identity=client.identity,
                task_queue=queue,
                task_queue_type=ACTIVITY,
                update_queue_rate_limit=update,
            )
        )
    except RPCError as exc:  # an older server, or no permission: the polls carry the limit instead
        if exc.status not in REFUSED:
            raise
        log.warning(
            "could not set the cluster-side rate limit of %s (%s: %s); each worker's own limit applies",
            queue,
            exc.status.name,
            exc.message,
        )
        return False
    log.info("task queue %s: cluster-side activity rate limit %s", queue, per_second or "none (unlimited)")
    return True
