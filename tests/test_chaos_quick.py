"""The short chaos run (CI): 40 lifecycles on two worker processes with worker kills (either
process), a PostgreSQL restart, a Temporal restart and exchange faults; it exits non-zero if any
invariant is violated."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from temporalio.service import RPCError, RPCStatusCode

from chaos.runner import patient


@pytest.mark.timeout(900)
def test_quick_chaos_run_keeps_every_invariant(repo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    result = subprocess.run(
        [sys.executable, "-m", "chaos", "--quick", "--out", str(out)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    report = result.stdout[-4000:]
    assert result.returncode == 0, report + result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["ok"] and data["violations"] == []
    assert data["faults"]["worker kill -9"] == 2 and data["faults"]["postgresql restart"] == 1
    # two worker processes, and each kill hit one of them
    assert data["config"]["workers"] == 2 and sum(data["killed_workers"].values()) == 2
    assert sum(data["kinds"].values()) == 40


async def test_patient_counts_the_outage_from_the_first_failure_not_from_the_first_call() -> None:
    """An open that waited long for its fill and then met a Temporal restart is retried: the
    give-up clock starts at the first failure (a deadline from the first call aborted long runs)."""
    calls: list[str] = []

    async def slow_then_outage_then_ok() -> str:
        calls.append("call")
        if len(calls) == 1:
            await asyncio.sleep(1.5)  # longer than the whole patience below
            raise RPCError("transport error", RPCStatusCode.UNKNOWN, b"")
        if len(calls) == 2:
            raise RPCError("tcp connect error", RPCStatusCode.UNAVAILABLE, b"")
        return "opened"

    assert await patient(slow_then_outage_then_ok, seconds=1.0) == "opened"
    assert len(calls) == 3

    async def always_down() -> str:
        raise RPCError("tcp connect error", RPCStatusCode.UNAVAILABLE, b"")

    with pytest.raises(RPCError):  # a real outage longer than the patience still ends the wait
        await patient(always_down, seconds=0.6)
