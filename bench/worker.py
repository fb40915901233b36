"""The benchmark's worker process: the product's worker, exactly as `worker.py` runs it (main
queue + one worker per exchange account, discovered from `bots`), plus the baseline workflows
(`bench.baseline`) on their own queue, in ONE process, so both share it and its CPU can be
measured alone.

    python -m bench.worker      (started by `python -m bench` with the stack's environment)
"""

from __future__ import annotations

import asyncio
import logging
import signal

from temporalio.worker import Worker

from bench.baseline import ACTIVITIES, BASELINE_QUEUE, WORKFLOWS
from egis.config import Settings
from egis.process import hard_exit
from egis.temporal import connect
from worker import cache_workflow_bytecode, run_worker

log = logging.getLogger("egis.bench.worker")


async def serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    client = await connect(settings)
    cache_workflow_bytecode(WORKFLOWS)  # the baselines' too, as the product's worker does for its own
    async with Worker(client, task_queue=BASELINE_QUEUE, workflows=WORKFLOWS, activities=ACTIVITIES):
        await run_worker(settings, stop, apply_migrations=False)


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code = 0
    try:
        asyncio.run(serve(settings))
    except Exception:
        log.exception("bench worker failed")
        code = 1
    hard_exit(code)


if __name__ == "__main__":
    main()
