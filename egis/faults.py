"""Failpoints: named places in the product where tests and the chaos runner can inject a crash
or an error, to prove that nothing is lost or duplicated when it happens there.

Off unless configured: `EGIS_FAILPOINTS="after_close_submit=crash,after_paper_write=raise"`
in the worker's environment, or `enable()` from an in-process test. Actions:
- `raise`: raise InjectedFault (as if the process hit a bug or lost its DB connection);
- `crash`: `os._exit(137)` at once, as `kill -9` would (no cleanup, no finally blocks);
- `<action>@<n>`: only the n-th time the point is reached (1-based); e.g. `crash@1`.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("egis.faults")

POINTS = frozenset({"after_open_submit", "after_close_submit", "after_paper_write"})
"""after_*_submit: the exchange accepted the order, nothing is recorded yet.
after_paper_write: the paper fill is written, the internal rows are not (same transaction)."""


class InjectedFault(RuntimeError):
    """Raised at a failpoint configured with `raise`."""


_active: dict[str, str] = {}
_hits: dict[str, int] = {}


def _parse(spec: str) -> dict[str, str]:
    points: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        if name not in POINTS:
            raise ValueError(f"unknown failpoint {name!r}; known: {', '.join(sorted(POINTS))}")
        points[name] = action or "raise"
    return points


def enable(name: str, action: str = "raise") -> None:
    _active.update(_parse(f"{name}={action}"))
    _hits.pop(name, None)


def disable_all() -> None:
    _active.clear()
    _hits.clear()


def load_from_env() -> None:
    _active.update(_parse(os.environ.get("EGIS_FAILPOINTS", "")))


def hit(name: str) -> None:
    """Reached failpoint `name`: do what it is configured to do (usually nothing)."""
    action = _active.get(name)
    if action is None:
        return
    _hits[name] = _hits.get(name, 0) + 1
    kind, _, nth = action.partition("@")
    if nth and int(nth) != _hits[name]:
        return
    log.warning("failpoint %s: %s", name, kind)
    if kind == "crash":
        os._exit(137)
    raise InjectedFault(f"failpoint {name}")
