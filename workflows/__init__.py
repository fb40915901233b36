"""Workflows: deterministic orchestration only. These modules import nothing heavy (no
sqlalchemy, no ccxt); activities are called by name."""

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
]
