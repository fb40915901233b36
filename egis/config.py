"""Settings, from the environment or a `.env` file (pydantic-settings).

`DATABASE_URL` and `TEMPORAL_ADDRESS` name production servers. When they are unset, commands
use the embedded stack that `egis dev up` started under the data dir (it writes the addresses
to `<data dir>/stack.json`), and `egis dev up` itself starts that stack. How Temporal is dialled
(a Temporal client profile, API key, TLS) is resolved in `egis/temporal.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from egis.errors import StackError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EGIS_", env_file=".env", extra="ignore")

    data_dir: Path = Path(".egis")
    database_url: str | None = Field(default=None, validation_alias=AliasChoices("DATABASE_URL", "EGIS_DATABASE_URL"))
    temporal_address: str | None = Field(
        default=None, validation_alias=AliasChoices("TEMPORAL_ADDRESS", "EGIS_TEMPORAL_ADDRESS")
    )
    temporal_namespace: str = Field(
        default="default", validation_alias=AliasChoices("TEMPORAL_NAMESPACE", "EGIS_TEMPORAL_NAMESPACE")
    )
    # EGIS_REGISTER_SEARCH_ATTRIBUTES: may the worker add missing search attributes at start?
    # Unset: only on the embedded stack; elsewhere it checks and names the commands to run.
    register_search_attributes: bool | None = None
    task_queue: str = "egis"
    # Worker Versioning (docs/operations.md, "Safe deploys"): on when EGIS_BUILD_ID is set; the
    # embedded stack and the tests leave it unset and run unversioned workers.
    deployment_name: str = "egis"
    build_id: str | None = None
    # the first version of a deployment that has none current yet makes itself current (first deploy)
    promote_first_version: bool = True
    accounts_dir: Path | None = None  # default: <data dir>/accounts

    # embedded stack ports (egis dev up)
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    postgres_port: int = 55432
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 in containers
    metrics_port: int = 9464  # the worker's /metrics (app counters); 0 disables
    sdk_metrics_port: int = 9465  # the Temporal SDK's own metrics; 0 disables

    # behaviour
    watch_tick_seconds: float = 5.0
    # open workflows the worker keeps in memory (the SDK's max_cached_workflows, its default 1000):
    # an event for one outside it (a close, a timer) first replays its history. Size it above the
    # open positions when memory allows (docs/architecture.md, "Scale").
    workflow_cache_size: int = Field(default=1000, ge=1, le=100_000)
    sync_grace_seconds: float = 10.0  # exchange sync leaves positions younger than this alone
    auto_schedules: bool = True  # the worker creates missing maintenance/sync schedules (safe defaults)
    streams: bool = True  # private websocket streams for live accounts (EGIS_STREAMS=0: REST polling only)
    log_level: str = "INFO"

    @property
    def resolved_accounts_dir(self) -> Path:
        return self.accounts_dir or self.data_dir / "accounts"

    @property
    def stack_file(self) -> Path:
        return self.data_dir / "stack.json"

    def running_stack(self) -> dict[str, str] | None:
        """Addresses written by a running `egis dev up` for this data dir, if it is still running."""
        from egis.stack.processes import DataDirLock

        try:
            info = json.loads(self.stack_file.read_text())
        except (OSError, ValueError):
            return None
        return info if DataDirLock.is_held(self.data_dir) else None

    def require_database_url(self) -> str:
        url = self.database_url or (self.running_stack() or {}).get("database_url")
        if not url:
            raise StackError(
                "no database: set DATABASE_URL, or start the embedded stack with `egis dev up` "
                f"(data dir {self.data_dir})"
            )
        return url

    def require_temporal_address(self) -> str:
        address = self.temporal_address or (self.running_stack() or {}).get("temporal_address")
        if not address:
            raise StackError(
                "no Temporal server: set TEMPORAL_ADDRESS, or start the embedded stack with `egis dev up` "
                f"(data dir {self.data_dir})"
            )
        return address


def async_database_url(url: str) -> str:
    """SQLAlchemy wants `postgresql+asyncpg://`; operators write `postgresql://` or `postgres://`."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise StackError(f"DATABASE_URL must be a PostgreSQL URL (postgresql://...), got {url.split(':', 1)[0]}://")
