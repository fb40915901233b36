"""How big each benchmark section is, in quick and full mode."""

from __future__ import annotations

import math
from dataclasses import dataclass

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT", "CLOUDUSDT")
"""Every market the simulator lists. An account holds one live position per symbol (one-way
mode), so N concurrent positions need N / 5 accounts."""


@dataclass(frozen=True)
class Sizes:
    mode: str
    closes: int  # section 1: manual closes, and as many of each baseline
    lifecycles: int  # section 2: concurrent open -> close lifecycles
    ghost_closes: int  # section 3 (i): ghosts closed by a request
    ghost_passive: int  # section 3 (ii): ghosts found by exchange sync
    sync_every_s: float  # section 3 (ii): the sync schedule's interval
    maintenance_rows: tuple[int, ...]  # section 4: synthetic table sizes
    maintenance_runs: int  # section 4: timed runs per query (the median is reported)
    opens: int = 20  # section 6: opens, one after the other (and as many of each baseline)
    stream_ghosts: int = 20  # section 7: ghosts detected by the private stream (and as many by REST sync)
    stream_fault_ghosts: int = 2  # section 7: ghosts planted under each stream fault
    rest_window_s: float = 30.0  # section 7: how long REST reads are counted
    reservations: int = 200  # section 5: concurrent reservations
    budget_repeats: int = 3  # section 5: contended / spread runs, alternated
    rate_burst: int = 120  # section 8: activities in the burst on one rate-limited account (10/s: 12 s)
    busy_rounds: int = 2  # section 9: accounts, five closes each on a busy queue and five on an idle one
    busy_backlog: int = 80  # section 9: reads queued ahead of the closes (8 activities/s: 10 s)
    scale_per_account: int = 20  # section 10: positions per account (5 accounts; full: 10,000 in all)
    scale_closes: int = 10  # section 10: manual closes, empty and loaded
    scale_aged_after_s: int = 20  # section 10: the aged bot's max_age_s (a chunk of 50 opens well within it)

    def accounts(self) -> dict[str, int]:
        """Simulator accounts per group: `lc` for sections 1 and 2 (all positions of section 1 are
        open at once: the closes and the direct baseline's), `gc` / `gp` for the ghosts (`gc`
        also holds as many normal positions, closed as the baseline)."""
        per = len(SYMBOLS)
        return {
            "lc": math.ceil(max(self.lifecycles, 2 * self.closes) / per),
            "gc": math.ceil(2 * self.ghost_closes / per),
            "gp": math.ceil(self.ghost_passive / per),
            "op": math.ceil(self.opens / per),
            "sb": max(2, math.ceil(self.stream_fault_ghosts / per)),  # section 7 cycles through its slots
            "sn": max(1, math.ceil(self.stream_fault_ghosts / per)),
        }


QUICK = Sizes(
    mode="quick",
    closes=40,
    lifecycles=60,
    ghost_closes=10,
    ghost_passive=15,
    sync_every_s=2.0,
    maintenance_rows=(10_000, 100_000),
    maintenance_runs=5,
    opens=20,
)
FULL = Sizes(
    mode="full",
    closes=300,
    lifecycles=500,
    ghost_closes=50,
    ghost_passive=50,
    sync_every_s=2.0,
    maintenance_rows=(10_000, 100_000, 1_000_000),
    maintenance_runs=5,
    opens=150,
    stream_ghosts=200,
    stream_fault_ghosts=10,
    rest_window_s=120.0,
    rate_burst=300,
    busy_rounds=6,
    busy_backlog=160,
    scale_per_account=2000,
    scale_closes=50,
    scale_aged_after_s=90,
)
