"""`make chaos` (long run) / `make chaos ARGS=--quick` (the short run CI uses).

    python -m chaos [--quick] [--lifecycles N] [--seed N] [--workers N] [--out results.json]

Prints a table (lifecycles, faults injected by kind, invariant violations, time to quiesce)
and exits non-zero when any invariant is violated or a lifecycle got stuck.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
from pathlib import Path

from chaos.runner import LONG, QUICK, ChaosResult, run
from egis.output import table
from egis.process import hard_exit


def render(result: ChaosResult) -> str:
    tally = result.tally
    rows = [{"what": "lifecycles", "count": sum(tally.kinds.values()), "detail": dict(tally.kinds)}]
    rows.append({"what": "outcomes", "count": sum(tally.outcomes.values()), "detail": dict(tally.outcomes)})
    rows.append({"what": "faults injected", "count": sum(tally.faults.values()), "detail": dict(tally.faults)})
    rows.append(
        {
            "what": "worker processes (kills per process)",
            "count": result.config.workers,
            "detail": dict(tally.killed_workers),
        }
    )
    rows.append(
        {"what": "opens refused, by reason", "count": sum(tally.refusals.values()), "detail": dict(tally.refusals)}
    )
    rows.append({"what": "operator close retries", "count": tally.operator_retries, "detail": ""})
    rows.append(
        {"what": "phantom cleanup (--confirm)", "count": tally.cleanup["cleanup runs"], "detail": dict(tally.cleanup)}
    )
    rows.append({"what": "invariant violations (expected 0)", "count": len(result.violations), "detail": ""})
    rows.append({"what": "time to quiesce (s)", "count": round(result.quiesce_seconds, 1), "detail": ""})
    rows.append({"what": "wall time (s)", "count": round(result.wall_seconds, 1), "detail": ""})
    title = f"Egis chaos run (seed {result.config.seed}, {result.config.workers} worker processes)"
    lines = [table(rows, ["what", "count", "detail"], title=title)]
    lines += [f"VIOLATION {v}" for v in result.violations]
    lines.append("OK: every invariant held" if result.ok else "FAILED")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the short run (CI): 40 lifecycles")
    parser.add_argument("--lifecycles", type=int, help="override the number of lifecycles")
    parser.add_argument("--seed", type=int, help="random seed (runs with the same seed inject the same plan)")
    parser.add_argument(
        "--workers", type=int, help="worker processes, each killed at random (default: 2 quick, 3 long)"
    )
    parser.add_argument("--out", type=Path, help="also write the result as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = QUICK if args.quick else LONG
    if args.lifecycles:
        config = dataclasses.replace(config, lifecycles=args.lifecycles)
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    if args.workers is not None:
        if args.workers < 1:
            parser.error("--workers must be at least 1")
        config = dataclasses.replace(config, workers=args.workers)
    print(f"chaos: {config}", flush=True)
    result = asyncio.run(run(config))
    print(render(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "ok": result.ok,
                    "config": dataclasses.asdict(config),
                    "kinds": result.tally.kinds,
                    "outcomes": result.tally.outcomes,
                    "faults": result.tally.faults,
                    "cleanup": result.tally.cleanup,
                    "refusals": result.tally.refusals,
                    "killed_workers": result.tally.killed_workers,
                    "violations": [str(v) for v in result.violations],
                    "quiesce_seconds": result.quiesce_seconds,
                    "wall_seconds": result.wall_seconds,
                },
                indent=2,
            )
        )
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.stdout.flush()
    hard_exit(main())
