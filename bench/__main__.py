"""`python -m bench [--quick] [--out PATH] [--only 1,2,...]` (or `make bench`, `make bench ARGS=--quick`).

Starts a throwaway stack, runs the sections, prints ONE table and writes it with the details to
bench/results/latest.json. Exits 1 when a count invariant breaks (bench.report.INVARIANTS),
never because of a timing; 2 when the benchmark itself could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import (
    budget,
    busy_queue,
    close_latency,
    ghosts,
    maintenance,
    open_latency,
    rate_limit,
    scale,
    streams,
    throughput,
)
from bench.config import FULL, QUICK, Sizes
from bench.env import BenchEnv, bench_env
from bench.report import INVARIANTS, SectionResult, document, render, write
from egis.process import hard_exit

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.json"
Section = Callable[[BenchEnv, Sizes], Awaitable[SectionResult]]
SECTIONS: dict[str, Section] = {
    "1": close_latency.run,
    "2": throughput.run,
    "3": ghosts.run,
    "4": maintenance.run,
    "5": budget.run,
    "6": open_latency.run,
    "7": streams.run,
    "8": rate_limit.run,
    "9": busy_queue.run,
    "10": scale.run,
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Egis benchmark suite (bench/README.md)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON (default %(default)s)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections (default: all)")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}: choose from {', '.join(SECTIONS)}")
    return args


async def run(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    started_at, started = datetime.now(UTC).isoformat(timespec="seconds"), time.perf_counter()
    results: list[SectionResult] = []
    print(f"egis bench, {sizes.mode} mode: starting a throwaway stack ...", flush=True)
    async with bench_env(sizes) as env:
        setup = env.describe()
        print(f"worker pid {env.worker.pid} (profile it with: py-spy record -p {env.worker.pid})", flush=True)
        for key in args.only.split(","):
            section_started = time.perf_counter()
            print(f"section {key} ...", end=" ", flush=True)
            results.append(await SECTIONS[key](env, sizes))
            print(f"{time.perf_counter() - section_started:.0f}s", flush=True)
    doc = document(
        results, mode=sizes.mode, setup=setup, started_at=started_at, duration_s=time.perf_counter() - started
    )
    print()
    print(
        render(
            results,
            f"Egis benchmark, {sizes.mode} mode, {doc['duration_s']:.0f}s (across runs, compare ratios and counts)",
        )
    )
    print(f"\nsetup: {setup}")
    print("invariants (must be 0): " + ", ".join(f"{name}={doc[name]}" for name in INVARIANTS))
    write(args.out, doc)
    print(f"written to {args.out}")
    return 0 if doc["ok"] else 1


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    args = parse(sys.argv[1:])
    try:
        code = asyncio.run(run(args))
    except KeyboardInterrupt:
        code = 130
    except Exception:
        logging.getLogger("egis.bench").exception("the benchmark could not run")
        code = 2
    hard_exit(code)


if __name__ == "__main__":
    main()
