"""Prometheus counters (prometheus-client), served by the worker on EGIS_METRICS_PORT.

Seed 003's monitoring recommendations, plus order and sync counts. The alert rules built on
them are in `deploy/prometheus-alerts.yml`.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

GHOST_POSITIONS = Counter(
    "ghost_positions_detected", "Positions found missing on the exchange before any close order", ["exchange"]
)
CLOSE_VALIDATION_FAILURES = Counter(
    "close_validation_failures",
    "Pre-close position reads that failed transiently; the close went on with the DB quantity",
    ["exchange"],
)
CLOSE_QUANTITY_MISMATCHES = Counter(
    "close_quantity_mismatches",
    "Closes where the exchange's quantity differed from ours by a step or more",
    ["exchange"],
)
CLOSE_POSITION_NOT_FOUND = Counter(
    "close_position_not_found",
    "Ambiguous close rejections (170131, -2022...) verified as a position already gone",
    ["exchange"],
)
ORDERS_SUBMITTED = Counter(
    "orders_submitted", "Orders sent to an exchange, by intent and outcome", ["intent", "exchange", "outcome"]
)
CLOSE_ATTEMPTS = Counter("close_attempts", "Close activity executions (each verify-then-close pass)", ["exchange"])
SYNC_FINDINGS = Counter("sync_findings", "Exchange-sync findings by kind", ["exchange", "kind"])
MAINTENANCE_FINDINGS = Counter("maintenance_findings", "Reconcile/cleanup findings by job and kind", ["job", "kind"])
ORPHAN_POSITIONS = Gauge(
    "orphan_positions",
    "Positions the exchange account holds that no live Egis position accounts for, at its last sync "
    "(never adopted or closed by Egis; an open in that symbol is refused)",
    ["exchange", "account"],
)
EXCHANGE_BACKOFF_SECONDS = Gauge(
    "exchange_backoff_seconds",
    "Seconds until requests to the account may go out again (a venue's Retry-After, a ban); 0 when none",
    ["exchange", "account"],
)
EXCHANGE_BACKOFFS = Counter(
    "exchange_backoffs",
    "Throttling answers (429, 418, Bybit 10006 / 403) that started a back-off",
    ["exchange", "account"],
)
EXCHANGE_CLOCK_SKEW_MS = Gauge(
    "exchange_clock_skew_ms",
    "Our clock minus the venue's, as last measured (signing uses the venue's)",
    ["exchange", "account"],
)
STREAM_CONNECTED = Gauge(
    "stream_connected", "1 while this worker holds the account's private stream connected", ["exchange", "account"]
)
STREAM_RECONNECTS = Counter(
    "stream_reconnects",
    "Private stream (re)connections after a loss (closed, silent, key expired)",
    ["exchange", "account"],
)
STREAM_EVENTS = Counter("stream_events", "Private stream events handled, by kind", ["exchange", "account", "kind"])
STREAM_GAP_FILL_FINDINGS = Counter(
    "stream_gap_fill_findings",
    "Ghosts and drifts found by the REST read after a (re)connect or a silence (events the stream never delivered)",
    ["exchange", "account"],
)
STREAM_EVENT_LAG = Histogram(
    "stream_event_lag_seconds",
    "Venue event time to handling by Egis",
    ["exchange"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
STREAM_MISSED_EVENTS = Counter(
    "stream_missed_events",
    "Ghosts the REST sync found while the account's stream was connected and had not reported them (seed 003)",
    ["exchange", "account"],
)

GC_PAUSES = Histogram(
    "python_gc_pause_seconds",
    "Python garbage-collection pauses of the worker, by generation (a full collection walks every "
    "cached workflow: its pause grows with EGIS_WORKFLOW_CACHE_SIZE)",
    ["generation"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
GC_PAUSE_WARNING_S = 0.5


def watch_gc_pauses(log: logging.Logger) -> Callable[[str, dict[str, int]], None]:
    """Time every garbage collection (`gc.callbacks`); a pause of GC_PAUSE_WARNING_S or more is
    also logged at WARNING, since nothing else in the worker runs meanwhile. Returns the callback
    (installed; `gc.callbacks.remove` takes it out)."""
    started: list[float] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
            return
        if not started:
            return
        pause = time.perf_counter() - started.pop()
        generation = str(info.get("generation", "?"))
        GC_PAUSES.labels(generation).observe(pause)
        if pause >= GC_PAUSE_WARNING_S:
            log.warning(
                "garbage collection of generation %s paused the worker for %.2f s (%s objects collected)",
                generation,
                pause,
                info.get("collected", 0),
            )

    gc.callbacks.append(callback)
    return callback
