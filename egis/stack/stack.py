"""The embedded default stack: PostgreSQL + Temporal dev server + migrations + the worker.

`Stack` starts what is not configured (DATABASE_URL / TEMPORAL_ADDRESS unset), attaches to
what is, runs the migrations, then runs the worker as a child process, or a pool of N worker
processes (`workers=N`: the chaos runner's "several workers, one truth"; worker 0 serves the
metrics ports, the others none, and each has its own log). It records the
addresses in `<data dir>/stack.json` so other commands find them, and stops every child in
order (worker, Temporal, PostgreSQL). A lock on the data dir refuses a second run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import IO

from egis.config import Settings
from egis.db import migrate
from egis.db.engine import make_engine
from egis.stack.postgres import EmbeddedPostgres
from egis.stack.processes import DataDirLock, ensure_port_free, spawn, stop_process
from egis.stack.temporal import TemporalDevServer


class Stack:
    def __init__(
        self,
        settings: Settings,
        *,
        run_worker: bool = True,
        worker_log: Path | None = None,
        ui: bool = True,
        worker_env: dict[str, str] | None = None,
        temporal_args: list[str] | None = None,
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError("a stack runs at least one worker process")
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.run_worker = run_worker
        self.worker_log = worker_log
        self.worker_env = worker_env or {}
        self._lock = DataDirLock(self.data_dir)
        self.postgres: EmbeddedPostgres | None = None
        self.temporal: TemporalDevServer | None = None
        self.workers: list[asyncio.subprocess.Process | None] = [None] * workers
        self.database_url = settings.database_url or ""
        self.temporal_address = settings.temporal_address or ""
        self._ui = ui
        self._temporal_args = temporal_args

    @property
    def worker(self) -> asyncio.subprocess.Process | None:
        """The first worker process (the only one unless `workers` > 1)."""
        return self.workers[0]

    @property
    def worker_count(self) -> int:
        return len(self.workers)

    @property
    def ui_url(self) -> str | None:
        return self.temporal.ui_url if self.temporal else None

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    async def __aenter__(self) -> Stack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def preflight(self) -> None:
        """Refuse before starting anything if a port this stack needs is taken."""
        needed = []
        if not self.database_url:
            needed.append((self.settings.postgres_port, "PostgreSQL", "EGIS_POSTGRES_PORT or --pg-port"))
        if not self.temporal_address:
            needed.append((self.settings.temporal_port, "Temporal gRPC", "EGIS_TEMPORAL_PORT or --temporal-port"))
            if self._ui:
                needed.append((self.settings.temporal_ui_port, "Temporal web UI", "EGIS_TEMPORAL_UI_PORT or --ui-port"))
        if self.run_worker and self.settings.metrics_port:
            needed.append((self.settings.metrics_port, "worker metrics", "EGIS_METRICS_PORT or --metrics-port"))
        for port, what, setting in needed:
            ensure_port_free(port, what, setting)

    async def start(self) -> None:
        self._lock.acquire()
        try:
            self.preflight()
            if not self.database_url:
                self.postgres = EmbeddedPostgres(
                    self.data_dir / "postgres", self.settings.postgres_port, self.logs_dir / "postgres.log"
                )
                await self.postgres.start()
                self.database_url = self.postgres.url
            if not self.temporal_address:
                self.temporal = TemporalDevServer(
                    self.data_dir / "temporal" / "temporal.db",
                    self.settings.temporal_port,
                    self.settings.temporal_ui_port if self._ui else None,
                    self.logs_dir / "temporal.log",
                    self.settings.temporal_namespace,
                    extra_args=self._temporal_args,
                )
                await self.temporal.start()
                self.temporal_address = self.temporal.address
            engine = make_engine(self.database_url, pool_size=1)
            try:
                await migrate.upgrade(engine)
            finally:
                await engine.dispose()
            if self.run_worker:
                await self.start_worker()  # all of them
            self._write_stack_file()
        except BaseException:
            await self.stop()
            raise

    def child_env(self) -> dict[str, str]:
        """Environment for processes that should use this stack (the worker, CLI subprocesses)."""
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "TEMPORAL_ADDRESS": self.temporal_address,
            "TEMPORAL_NAMESPACE": self.settings.temporal_namespace,
            "EGIS_DATA_DIR": str(self.data_dir),
            "EGIS_TASK_QUEUE": self.settings.task_queue,
            "EGIS_METRICS_PORT": str(self.settings.metrics_port),
            "EGIS_SDK_METRICS_PORT": str(self.settings.sdk_metrics_port),
            "EGIS_ACCOUNTS_DIR": str(self.settings.resolved_accounts_dir.resolve()),
            **self.worker_env,
        }

    def worker_log_path(self, index: int) -> Path | None:
        if self.worker_log is None or index == 0:
            return self.worker_log
        return self.worker_log.with_name(f"{self.worker_log.stem}-{index}{self.worker_log.suffix}")

    async def start_worker(self, index: int | None = None) -> None:
        """Start worker `index`, or (None) every worker of the pool that is not running."""
        if index is None:
            for i, proc in enumerate(self.workers):
                if proc is None or proc.returncode is not None:
                    await self.start_worker(i)
            return
        env = self.child_env()
        if index > 0:  # one process per port: only worker 0 serves the metrics
            env.update({"EGIS_METRICS_PORT": "0", "EGIS_SDK_METRICS_PORT": "0"})
        log: IO[bytes] | None = None
        path = self.worker_log_path(index)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            log = path.open("ab")
        try:
            self.workers[index] = await spawn([sys.executable, "-m", "worker"], log=log, env=env)
        finally:
            if log is not None:
                log.close()

    async def stop_worker(self, index: int | None = None, *, kill: bool = False) -> None:
        """Stop worker `index` (kill: SIGKILL, as a crash), or (None) every worker."""
        indexes = range(len(self.workers)) if index is None else [index]
        procs = [(i, self.workers[i]) for i in indexes]
        await asyncio.gather(
            *(stop_process(p, signal.SIGKILL if kill else signal.SIGTERM, 30) for _, p in procs if p is not None)
        )
        for i, _ in procs:
            self.workers[i] = None

    def children(self) -> dict[str, asyncio.subprocess.Process]:
        procs = {f"worker-{i}" if i else "worker": proc for i, proc in enumerate(self.workers)}
        procs |= {
            "temporal": self.temporal.process if self.temporal else None,
            "postgres": self.postgres.process if self.postgres else None,
        }
        return {name: p for name, p in procs.items() if p is not None}

    async def wait_for_child_exit(self) -> str:
        """Return the name of the first child that exits (for the supervisor's watch)."""
        waits = {asyncio.ensure_future(p.wait()): name for name, p in self.children().items()}
        if not waits:
            await asyncio.Event().wait()
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return waits[next(iter(done))]

    async def stop(self) -> None:
        await self.stop_worker()
        if self.temporal is not None:
            await self.temporal.stop()
        if self.postgres is not None:
            await self.postgres.stop()
        with contextlib.suppress(FileNotFoundError):
            self.settings.stack_file.unlink()
        self._lock.release()

    def _write_stack_file(self) -> None:
        info = {
            "database_url": self.database_url,
            "temporal_address": self.temporal_address,
            "temporal_namespace": self.settings.temporal_namespace,
            "ui_url": self.ui_url or "",
            "supervisor_pid": str(os.getpid()),
        }
        self.settings.stack_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.settings.stack_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(self.settings.stack_file)
