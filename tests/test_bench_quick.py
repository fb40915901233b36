"""The benchmark's quick mode runs end to end and its count invariants hold.

Nothing here looks at a timing: the machine is shared and noisy. Only the counts that must be 0
whatever the speed (orders sent to ghosts, budget overspend) and the exit code, which is non-zero
when any count invariant breaks (bench.report.INVARIANTS).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TIMEOUT_S = 1200  # quick mode takes a few minutes; a loaded machine gets plenty of slack


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_quick_bench_runs_and_keeps_its_invariants(tmp_path: Path, repo_root: Path) -> None:
    out = tmp_path / "quick.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    doc = json.loads(out.read_text())
    assert doc["ghost_orders_sent"] == 0 and doc["budget_overspend"] == 0 and doc["stream_ghosts_missed"] == 0
    assert doc["mode"] == "quick" and doc["ok"] is True
