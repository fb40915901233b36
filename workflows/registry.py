"""Every workflow the worker registers (kept out of workflows/__init__.py, which the sandbox
re-imports for each workflow instance): ALL_WORKFLOWS, each with its versioning behaviour, for
versioned workers; UNVERSIONED_WORKFLOWS, the same without it, for workers without a build id
(workflows/unversioned.py says why). `workflows_for(versioned)` picks one."""

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
    from workflows.unversioned import (
        UnversionedAccountStreamWorkflow,
        UnversionedExchangeSyncWorkflow,
        UnversionedHealthWorkflow,
        UnversionedPaperReconcileWorkflow,
        UnversionedPhantomCleanupWorkflow,
        UnversionedPositionWorkflow,
        UnversionedPriceWatchWorkflow,
    )

    return [
        UnversionedHealthWorkflow,
        UnversionedPositionWorkflow,
        UnversionedPriceWatchWorkflow,
        UnversionedExchangeSyncWorkflow,
        UnversionedPaperReconcileWorkflow,
        UnversionedPhantomCleanupWorkflow,
        UnversionedAccountStreamWorkflow,
    ]
