"""Every workflow the worker registers (kept out of workflows/__init__.py, which the sandbox
re-imports for each workflow instance): ALL_WORKFLOWS, each with its versioning behaviour, for
versioned workers; their unversioned twins, for workers without a build id.
`workflows_for(versioned)` picks one.

Why twins: a worker without a Worker Deployment Version may not report a versioning behaviour
(the server refuses the workflow task: "versioning behavior cannot be specified without
deployment options being set with versioned mode"), and the Python SDK reports the one declared
in `@workflow.defn`. So unversioned workers (the embedded stack, the tests, the benchmarks)
register twins: the same code under the same workflow name, minus the behaviour. Each twin lives
in its workflow's own module, because the sandbox re-imports a workflow's module for every
workflow instance: one module holding every twin would be re-run (seven class definitions) for
each of them. Histories are the same either way."""

from workflows.account_stream import AccountStreamWorkflow
from workflows.health import HealthWorkflow
from workflows.maintenance import ExchangeSyncWorkflow, PaperReconcileWorkflow, PhantomCleanupWorkflow
from workflows.position import PositionWorkflow
from workflows.price_watch import PriceWatchWorkflow

ALL_WORKFLOWS = [
    HealthWorkflow,
    PositionWorkflow,
    PriceWatchWorkflow,
    ExchangeSyncWorkflow,
    PaperReconcileWorkflow,
    PhantomCleanupWorkflow,
    AccountStreamWorkflow,
]


def workflows_for(versioned: bool) -> list[type]:
    """The workflow classes a worker registers: with versioning behaviours only when versioned."""
    if versioned:
        return list(ALL_WORKFLOWS)
    from workflows.account_stream import UnversionedAccountStreamWorkflow
    from workflows.health import UnversionedHealthWorkflow
    from workflows.maintenance import (
        UnversionedExchangeSyncWorkflow,
        UnversionedPaperReconcileWorkflow,
        UnversionedPhantomCleanupWorkflow,
    )
    from workflows.position import UnversionedPositionWorkflow
    from workflows.price_watch import UnversionedPriceWatchWorkflow

    return [
        UnversionedHealthWorkflow,
        UnversionedPositionWorkflow,
        UnversionedPriceWatchWorkflow,
        UnversionedExchangeSyncWorkflow,
        UnversionedPaperReconcileWorkflow,
        UnversionedPhantomCleanupWorkflow,
        UnversionedAccountStreamWorkflow,
    ]
