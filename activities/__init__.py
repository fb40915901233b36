"""Activities: all I/O (database, exchanges) lives here, never in workflows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from activities.deps import Deps
from activities.health import HealthActivities


def main_queue_activities(deps: Deps) -> list[Callable[..., Any]]:
    """Activities served on the main task queue (database work, no exchange calls)."""
    health = HealthActivities(deps)
    return [health.health_check]
