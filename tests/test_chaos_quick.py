"""The short chaos run (CI): 40 lifecycles on two worker processes with worker kills (either
process), a PostgreSQL restart, a Temporal restart and exchange faults; it exits non-zero if any
invariant is violated."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


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
