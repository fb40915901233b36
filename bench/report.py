"""The benchmark's output: one table (every figure beside its same-run baseline) and latest.json.

Counts that must hold whatever the timings (`INVARIANTS`) are stored at the top level of the
JSON; the command exits non-zero when one of them is not 0. Timings never fail a run.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from egis.output import plain, table

INVARIANTS = (
    "ghost_orders_sent",
    "budget_overspend",
    "maintenance_missed",
    "maintenance_unexpected",
    "stream_ghosts_missed",
    "rate_limit_exceeded",
)
"""ghost_orders_sent: orders the simulator received for positions it had already closed;
budget_overspend: max(0, reserved - budget) after concurrent reservations on one bot;
maintenance_missed / _unexpected: planted paper mismatches and phantom shorts not found / found
although not planted; stream_ghosts_missed: ghosts made under stream faults that nothing detected;
rate_limit_exceeded: requests a rate-limited account received while the 10 s before them already held
the limit's worth (section 8, three workers)."""

Value = float | int | str | None


@dataclass
class Row:
    section: str
    metric: str
    egis: Value
    baseline: Value = None
    baseline_is: str = ""

    @property
    def ratio(self) -> float | None:
        if isinstance(self.egis, int | float) and isinstance(self.baseline, int | float) and self.baseline:
            return self.egis / self.baseline
        return None


@dataclass
class SectionResult:
    name: str
    rows: list[Row]
    data: dict[str, Any]
    counts: dict[str, float] = field(default_factory=dict)


def fmt(value: Value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool | int | str):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def render(sections: list[SectionResult], title: str) -> str:
    rows = [
        {
            "section": s.name if i == 0 else "",
            "metric": r.metric,
            "egis": fmt(r.egis),
            "baseline": fmt(r.baseline),
            "ratio": f"x{fmt(r.ratio)}" if r.ratio is not None else "",
            "baseline is": r.baseline_is,
        }
        for s in sections
        for i, r in enumerate(s.rows)
    ]
    return table(rows, ["section", "metric", "egis", "baseline", "ratio", "baseline is"], title=title)


def invariants(sections: list[SectionResult]) -> dict[str, float]:
    counts: dict[str, float] = dict.fromkeys(INVARIANTS, 0)
    for section in sections:
        for name, count in section.counts.items():
            counts[name] += count
    return counts


def document(
    sections: list[SectionResult], *, mode: str, setup: dict[str, Any], started_at: str, duration_s: float
) -> dict[str, Any]:
    counts = invariants(sections)
    return {
        **counts,
        "ok": not any(counts.values()),
        "mode": mode,
        "started_at": started_at,
        "duration_s": round(duration_s, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "setup": setup,
        "table": [asdict(r) | {"section": s.name, "ratio": r.ratio} for s in sections for r in s.rows],
        "sections": {s.name: s.data for s in sections},
    }


def write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(plain(doc), indent=2) + "\n")
    tmp.replace(path)
