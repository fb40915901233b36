"""Workflow modules import nothing heavy: no sqlalchemy, no ccxt (the sandbox re-imports them
on every run, and ccxt breaks sandbox validation outright)."""

from __future__ import annotations

import importlib.util
import pkgutil
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest
import temporalio.workflow
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

import workflows
from worker import cache_workflow_bytecode
from workflows import position
from workflows.position import PositionWorkflow


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


async def test_a_workflow_instance_does_not_compile_its_module_once_the_worker_cached_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15: the sandbox re-imports a workflow's module for every instance (each start, each
    replay). With PYTHONDONTWRITEBYTECODE (this machine's setting, common in containers) nothing
    cached its bytecode, so every instance compiled workflows/position.py from source. The worker
    now writes that cache at start (`cache_workflow_bytecode`)."""
    monkeypatch.setattr(sys, "pycache_prefix", str(tmp_path))  # an empty bytecode cache...
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # ...that imports do not fill
    compiled: list[str] = []
    real = SourceFileLoader.source_to_code

    def counting(self: SourceFileLoader, data: bytes, path: str, *, _optimize: int = -1) -> object:
        compiled.append(path)
        return real(self, data, path, _optimize=_optimize)

    monkeypatch.setattr(SourceFileLoader, "source_to_code", counting)
    defn = temporalio.workflow._Definition.must_from_class(PositionWorkflow)
    SandboxedWorkflowRunner().prepare_workflow(defn)  # one workflow instance, as a start creates
    assert position.__file__ in compiled
    cached = cache_workflow_bytecode([PositionWorkflow])  # what the worker does at start
    assert cached == [importlib.util.cache_from_source(f) for f in sorted([workflows.__file__, position.__file__])]
    compiled.clear()
    SandboxedWorkflowRunner().prepare_workflow(defn)
    SandboxedWorkflowRunner().prepare_workflow(defn)
    assert compiled == []
