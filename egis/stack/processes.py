"""Child-process plumbing for the embedded stack: port checks, the data-dir lock, binaries,
and starting children that die with their parent."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

from egis.errors import StackError

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (for tests and benchmarks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_port_free(port: int, what: str, setting: str) -> None:
    """Refuse if something listens on the port. SO_REUSEADDR, as the servers themselves use, so
    TIME_WAIT leftovers of a run that just stopped don't block an immediate restart."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError as exc:
            raise StackError(
                f"port {port} ({what}) is already in use: stop whatever holds it, or choose another port with {setting}"
            ) from exc


def find_binary(name: str) -> Path:
    """A console binary installed by a pip package: next to this interpreter first, then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    if found:
        return Path(found)
    raise StackError(f"the `{name}` binary was not found; install the project (`pip install -e .`)")


def _die_with_parent() -> None:
    """Runs in the child before exec: ask the kernel to SIGTERM it when the parent dies, so a
    killed supervisor never leaves servers behind (Linux; a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


async def spawn(
    args: list[str],
    *,
    log: IO[bytes] | None = None,
    env: dict[str, str] | None = None,
    user: str | None = None,
    new_session: bool = True,
) -> asyncio.subprocess.Process:
    """Start a child in its own session (Ctrl-C reaches only the supervisor, which stops the
    children in order) that dies if the supervisor dies."""
    return await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log if log is not None else None,
        stderr=asyncio.subprocess.STDOUT if log is not None else None,
        env=env,
        user=user,
        start_new_session=new_session,
        preexec_fn=_die_with_parent,
    )


async def stop_process(
    proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM, timeout: float = 20.0
) -> int | None:
    """Signal, wait, then kill. Returns the exit code."""
    if proc.returncode is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        return await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        return await proc.wait()


class DataDirLock:
    """An exclusive lock on the data dir, so two `egis dev up` runs can't share one."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "egis.lock"
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise StackError(
                f"data dir {self.path.parent} is locked by another run (pid {holder}): stop it first, "
                "or use another --data-dir"
            ) from exc
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    @staticmethod
    def is_held(data_dir: Path) -> bool:
        path = data_dir / "egis.lock"
        if not path.exists():
            return False
        with path.open("a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            return False


class ProcessExited(StackError):
    """The process being waited for has exited: waiting longer cannot make it ready."""


async def wait_until(check: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll an async or sync check until it returns truthy, or raise StackError.

    A check that raises `ProcessExited` ends the wait at once (a dead process never becomes ready).
    """
    deadline = asyncio.get_running_loop().time() + timeout
    last_error: BaseException | None = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
        except ProcessExited:
            raise
        except Exception as exc:
            last_error = exc
        await asyncio.sleep(interval)
    raise StackError(f"{what} did not become ready within {timeout:.0f}s" + (f": {last_error}" if last_error else ""))
