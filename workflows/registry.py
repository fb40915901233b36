"""Every workflow the worker registers (kept out of workflows/__init__.py, which the sandbox
re-imports for each workflow instance)."""

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
