"""Workflows: deterministic orchestration only. These modules import nothing heavy (no
sqlalchemy, no ccxt); activities are called by name.

Nothing is imported here on purpose: the sandbox re-imports a workflow's package for every
workflow instance, so this file must stay empty. The worker registers
`workflows.registry.ALL_WORKFLOWS`.
"""
