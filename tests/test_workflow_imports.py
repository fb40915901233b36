"""Workflow modules import nothing heavy: no sqlalchemy, no ccxt (the sandbox re-imports them
on every run, and ccxt breaks sandbox validation outright)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import workflows


def test_workflow_modules_do_not_load_sqlalchemy_or_ccxt() -> None:
    names = [f"workflows.{m.name}" for m in pkgutil.iter_modules([str(Path(workflows.__file__).parent)])]
    assert names, "no workflow modules found"
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'sqlalchemy', 'ccxt', 'asyncpg', 'aiohttp'})\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"workflow modules pulled in: {result.stdout.strip()}"
