"""Workflows: deterministic orchestration only. These modules import nothing heavy (no
sqlalchemy, no ccxt); activities are called by name."""

from workflows.health import HealthWorkflow

ALL_WORKFLOWS = [HealthWorkflow]
