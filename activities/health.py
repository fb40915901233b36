"""The health check activity: one round trip to the database and the migration head."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text
from temporalio import activity

from activities.deps import Deps
from egis.db.migrate import current_revision
from egis.models import HealthReport


class HealthActivities:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @activity.defn(name="health_check")
    async def health_check(self) -> HealthReport:
        async with self.deps.engine.connect() as conn:
            database = (await conn.execute(text("SELECT current_database()"))).scalar_one()
        return HealthReport(
            worker_identity=activity.info().task_queue,
            database=database,
            migrations_head=await current_revision(self.deps.engine),
            checked_at=datetime.now(UTC),
        )
