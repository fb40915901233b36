"""Histories recorded by the tests (tests/histories/**/*.json) replay cleanly against the current
workflow code: a change that would break running workflows fails here, not in production.

Record the current code's histories deliberately with
`EGIS_RECORD_HISTORIES=1 pytest tests/test_lifecycle.py tests/test_aged.py` (into tests/histories/);
before a workflow change that needs a patch, move the current ones into a folder named after it
(tests/histories/before-lean/: recorded before the patch `lean-lifecycle`), so both keep replaying.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.lifecycle import HISTORIES
from workflows.registry import ALL_WORKFLOWS

FILES = sorted(HISTORIES.glob("**/*.json"))


def test_there_are_histories_to_replay() -> None:
    assert len(FILES) >= 16, "record histories with EGIS_RECORD_HISTORIES=1 (see module docstring)"


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, json.loads(path.read_text()))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(HISTORIES).with_suffix("")))
async def test_history_replays(path: Path) -> None:
    history = load(path)
    replayer = Replayer(
        workflows=ALL_WORKFLOWS,
        data_converter=pydantic_data_converter,
        workflow_failure_exception_types=[ValidationError],
    )
    await replayer.replay_workflow(history)
