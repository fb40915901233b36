"""Activities: all I/O (database, exchanges) lives here, never in workflows.

Two kinds of task queue: the main queue (database work, workflows) and one queue per exchange
account for everything that talks to that exchange, so each account's rate limit holds across
any number of workers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from activities.deps import Deps
from activities.health import HealthActivities
from activities.maintenance import MaintenanceActivities
from activities.positions import PositionActivities
from activities.streams import StreamActivities
from activities.watch import WatchActivities


def main_queue_activities(deps: Deps) -> list[Callable[..., Any]]:
    """Database-only activities, served on the main task queue."""
    health, positions, watch = HealthActivities(deps), PositionActivities(deps), WatchActivities(deps)
    maintenance = MaintenanceActivities(deps)
    return [
        health.health_check,
        positions.resolve_bot,
        positions.reserve_position,
        positions.position_status,
        positions.close_failed,
        watch.ensure_price_watcher,
        maintenance.reconcile_paper,
        maintenance.phantom_accounts,
        maintenance.cleanup_phantom_shorts,
    ]


def account_queue_activities(deps: Deps) -> list[Callable[..., Any]]:
    """Activities that call an exchange, served on each account's own task queue."""
    positions, watch, maintenance = PositionActivities(deps), WatchActivities(deps), MaintenanceActivities(deps)
    return [
        positions.open_position,
        positions.abandon_open_for,
        positions.plan_open,
        positions.place_open_order,
        positions.abandon_open,
        positions.close_position,
        positions.observe_position,
        watch.check_aged_exits,
        maintenance.sync_account,
        maintenance.read_account_positions,
        StreamActivities(deps).account_stream,
    ]
