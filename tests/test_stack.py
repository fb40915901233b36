"""`egis dev up`: the embedded stack comes up from an empty data dir, runs a workflow through
its worker, refuses a taken port or a locked data dir, and leaves no child behind."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil
from temporalio.testing import WorkflowEnvironment

from egis.client import EgisClient
from egis.config import Settings
from egis.stack.processes import DataDirLock, ProcessExited, free_port, wait_until


def dev_up(data_dir: Path, ports: dict[str, int]) -> subprocess.Popen[str]:
    env = {**os.environ, "EGIS_SDK_METRICS_PORT": str(ports["sdk"])}
    env.pop("DATABASE_URL", None)
    env.pop("TEMPORAL_ADDRESS", None)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "egis.cli",
            "dev",
            "up",
            "--data-dir",
            str(data_dir),
            "--temporal-port",
            str(ports["temporal"]),
            "--ui-port",
            str(ports["ui"]),
            "--pg-port",
            str(ports["pg"]),
            "--metrics-port",
            str(ports["metrics"]),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


async def fetch(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200, url
        return await response.text()


def ports() -> dict[str, int]:
    return {name: free_port() for name in ("temporal", "ui", "pg", "metrics", "sdk")}


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 90) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if needle in line:
            return lines
    proc.kill()
    raise AssertionError(f"never saw {needle!r}; output:\n" + "\n".join(lines))


async def test_dev_up_runs_a_workflow_and_leaves_no_child_after_sigterm(tmp_path: Path) -> None:
    data_dir = tmp_path / ".egis"
    p = ports()
    proc = dev_up(data_dir, p)
    try:
        lines = wait_for_line(proc, "worker metrics")
        output = "\n".join(lines)
        assert f"http://127.0.0.1:{p['ui']}" in output
        assert f"DATABASE_URL      postgresql://postgres@127.0.0.1:{p['pg']}/egis" in output
        assert f"TEMPORAL_ADDRESS  127.0.0.1:{p['temporal']}" in output
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3  # postgres (and its backends), temporal, worker

        settings = Settings(data_dir=data_dir)  # finds the running stack through stack.json
        async with EgisClient.from_settings(settings) as client:
            report = await client.health(timeout=60)
        assert report.database == "egis" and report.migrations_head is not None

        app_metrics = await fetch(f"http://127.0.0.1:{p['metrics']}/metrics")
        for name in ("ghost_positions_detected_total", "close_validation_failures_total", "orders_submitted_total"):
            assert f"# TYPE {name} counter" in app_metrics
        sdk_metrics = await fetch(f"http://127.0.0.1:{p['sdk']}/metrics")
        assert "temporal_workflow_completed" in sdk_metrics or "temporal_activity_execution_latency" in sdk_metrics

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    await asyncio.sleep(0.5)
    alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"children left behind: {[(c.pid, c.name()) for c in alive]}"
    assert not (data_dir / "stack.json").exists()


def test_dev_up_refuses_a_taken_port(tmp_path: Path) -> None:
    p = ports()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", p["temporal"]))
        blocker.listen()
        proc = dev_up(tmp_path / ".egis", p)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert f"port {p['temporal']} (Temporal gRPC) is already in use" in out
    assert not (tmp_path / ".egis" / "postgres" / "PG_VERSION").exists()  # nothing was started


def test_dev_up_refuses_a_locked_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / ".egis"
    lock = DataDirLock(data_dir)
    lock.acquire()
    try:
        proc = dev_up(data_dir, ports())
        out, _ = proc.communicate(timeout=60)
    finally:
        lock.release()
    assert proc.returncode == 3
    assert f"is locked by another run (pid {os.getpid()})" in out


def configured_dev_up(data_dir: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "egis.cli", "dev", "up", "--data-dir", str(data_dir), "--metrics-port", "0"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


async def test_dev_up_with_configured_servers_starts_neither(
    tmp_path: Path, database_url: str, temporal_env: WorkflowEnvironment
) -> None:
    """DATABASE_URL and TEMPORAL_ADDRESS set: no PostgreSQL, no Temporal is started; migrations
    and the worker run against the configured servers."""
    address = temporal_env.client.service_client.config.target_host
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": address,
        "EGIS_TASK_QUEUE": "configured",
        "EGIS_SDK_METRICS_PORT": "0",
    }
    proc = configured_dev_up(tmp_path / ".egis", env)
    try:
        lines = wait_for_line(proc, "worker metrics")
        output = "\n".join(lines)
        assert f"DATABASE_URL      {database_url}" in output and f"TEMPORAL_ADDRESS  {address}" in output
        assert "web UI" not in output
        children = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        assert "postgres -D" not in names and "temporal server" not in names and "worker" in names
        settings = Settings(database_url=database_url, temporal_address=address, task_queue="configured")
        async with EgisClient.from_settings(settings) as client:
            report = await client.health(timeout=60)
        assert report.migrations_head is not None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_waiting_for_a_server_that_exited_ends_at_once() -> None:
    """A server that died while starting is reported at once, not after the whole ready timeout."""
    calls = 0

    async def check() -> bool:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionRefusedError("not listening yet")  # still starting: keep waiting
        raise ProcessExited("temporal exited with code 1")

    began = time.monotonic()
    try:
        await wait_until(check, 60, "the server", interval=0.01)
    except ProcessExited:
        pass
    else:
        raise AssertionError("wait_until returned for a server that exited")
    assert calls == 3 and time.monotonic() - began < 5
