"""What activities need, built once per worker process and shared by every activity."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from egis.config import Settings
from egis.db.store import Store
from egis.exchanges.registry import Gateways


@dataclass
class Deps:
    settings: Settings
    engine: AsyncEngine
    store: Store
    gateways: Gateways
    temporal: Client | None = None  # for activities that start or signal workflows

    @classmethod
    def build(cls, settings: Settings, engine: AsyncEngine, temporal: Client | None = None) -> Deps:
        return cls(
            settings=settings,
            engine=engine,
            store=Store(engine),
            gateways=Gateways(settings.resolved_accounts_dir, engine),
            temporal=temporal,
        )
