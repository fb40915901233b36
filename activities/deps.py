"""What activities need, built once per worker process and shared by every activity."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from egis.config import Settings
from egis.db.store import Store


@dataclass
class Deps:
    settings: Settings
    engine: AsyncEngine
    store: Store
