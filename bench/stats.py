"""Small statistics and measurement helpers: percentiles, a stopwatch, process CPU time."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import psutil

T = TypeVar("T")


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile (pct in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float], scale: float = 1.0) -> dict[str, float]:
    """p50 / p95 / p99 / max / mean of a sample, multiplied by `scale` (1000: seconds -> ms)."""
    return {
        "n": len(values),
        "p50": percentile(values, 50) * scale,
        "p95": percentile(values, 95) * scale,
        "p99": percentile(values, 99) * scale,
        "max": max(values) * scale,
        "mean": statistics.fmean(values) * scale,
    }


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


async def timed(action: Callable[[], Awaitable[T]]) -> tuple[float, T]:
    """Run `action` and return (seconds, result)."""
    started = time.perf_counter()
    result = await action()
    return time.perf_counter() - started, result


def process_cpu(pid: int, *, descendants: bool = True) -> float:
    """CPU seconds (user + system) used so far by a process and, with `descendants`, by all its
    descendants, including children that already exited (PostgreSQL's backends are children of
    the postmaster)."""
    try:
        root = psutil.Process(pid)
        times = root.cpu_times()
        if not descendants:
            return times.user + times.system
        total = times.user + times.system + times.children_user + times.children_system
        for child in root.children(recursive=True):
            try:
                child_times = child.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += child_times.user + child_times.system
        return total
    except psutil.NoSuchProcess:
        return 0.0


@dataclass
class CpuMeter:
    """CPU seconds used by named processes between `start()` and `stop()`. `pids` maps a name to
    (pid, with descendants); the benchmark's own process is measured without its children."""

    pids: dict[str, tuple[int, bool]]

    def _now(self) -> dict[str, float]:
        return {name: process_cpu(pid, descendants=deep) for name, (pid, deep) in self.pids.items()}

    def start(self) -> None:
        self._before = self._now()

    def stop(self) -> dict[str, float]:
        after = self._now()
        return {name: after[name] - self._before[name] for name in self.pids}
