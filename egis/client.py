"""A small typed client for bots and the CLI.

    async with EgisClient.from_settings(Settings()) as egis:
        await egis.create_bot(BotSpec(name="alpha", exchange="paper", account="paper-1", budget_usd=1000))
        print(await egis.budget("alpha"))

Reads (positions, budget) come from the database, the single source of truth. Anything that
changes a position goes through its workflow.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from egis.config import Settings
from egis.db.engine import make_engine
from egis.db.store import Store
from egis.errors import StackError
from egis.models import BotSpec, BotView, BudgetView, HealthReport
from egis.temporal import connect


@dataclass
class EgisClient:
    settings: Settings
    engine: AsyncEngine
    temporal: Client | None

    @classmethod
    def from_settings(cls, settings: Settings, *, temporal: bool = True) -> _Connector:
        return _Connector(settings, temporal)

    @property
    def store(self) -> Store:
        return Store(self.engine)

    def require_temporal(self) -> Client:
        if self.temporal is None:
            raise StackError("this client was opened without a Temporal connection")
        return self.temporal

    # ------------------------------------------------------------ bots and budget
    async def create_bot(self, spec: BotSpec, *, actor: str) -> BotView:
        return await self.store.create_bot(spec, actor=actor)

    async def list_bots(self) -> list[BotView]:
        return await self.store.list_bots()

    async def get_bot(self, name: str) -> BotView:
        return await self.store.get_bot(name)

    async def budget(self, bot: str) -> BudgetView:
        return await self.store.budget(bot)

    async def set_budget(self, bot: str, budget_usd: Decimal, *, actor: str) -> BudgetView:
        BotSpec(name=bot, exchange="paper", account="x", budget_usd=budget_usd)  # validates the amount
        return await self.store.set_budget(bot, budget_usd, actor=actor)

    # ------------------------------------------------------------ health
    async def health(self, timeout: float = 30.0) -> HealthReport:
        from workflows.health import HealthWorkflow

        return await self.require_temporal().execute_workflow(
            HealthWorkflow.run,
            id=f"health-{uuid.uuid4().hex[:12]}",
            task_queue=self.settings.task_queue,
            execution_timeout=timedelta(seconds=timeout),
        )


class _Connector:
    """`async with EgisClient.from_settings(...)`: opens the engine (and Temporal), closes them after."""

    def __init__(self, settings: Settings, temporal: bool) -> None:
        self.settings = settings
        self.want_temporal = temporal
        self.client: EgisClient | None = None

    async def __aenter__(self) -> EgisClient:
        engine = make_engine(self.settings.require_database_url(), pool_size=5)
        temporal_client = None
        if self.want_temporal:
            try:
                temporal_client = await connect(
                    self.settings.require_temporal_address(), self.settings.temporal_namespace
                )
            except Exception:
                await engine.dispose()
                raise
        self.client = EgisClient(self.settings, engine, temporal_client)
        return self.client

    async def __aexit__(self, *exc: Any) -> None:
        if self.client is not None:
            await self.client.engine.dispose()
