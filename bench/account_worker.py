"""Another worker process for chosen accounts only (bench section 8): the product's account-queue
workers (`worker.AccountWorkers.serve`: the queue's rate limit set on the cluster, the same value
on the Worker), for the accounts named on the command line, as a replica serving them would.

    python -m bench.account_worker bybit:bench-rl-xxxx-limited bybit:bench-rl-xxxx-free

(A full `python -m worker` would also serve every other bench account: hundreds of pollers more,
beyond the dev server's per-namespace poller limit in full mode.)
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from activities.deps import Deps
from egis.config import Settings
from egis.db.engine import make_engine
from egis.models import Exchange
from egis.process import hard_exit
from egis.temporal import connect
from worker import AccountWorkers

log = logging.getLogger("egis.bench.account_worker")


async def serve(settings: Settings, accounts: list[tuple[Exchange, str]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    client = await connect(settings)
    engine = make_engine(settings.require_database_url(), pool_size=2)
    deps = Deps.build(settings, engine, client)
    workers = AccountWorkers(client, deps)
    try:
        for exchange, account in accounts:
            await workers.serve(exchange, account)
        await stop.wait()
    finally:
        await workers.shutdown()
        await deps.gateways.close()
        await engine.dispose()


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    accounts = [(Exchange(spec.split(":", 1)[0]), spec.split(":", 1)[1]) for spec in sys.argv[1:]]
    code = 0
    try:
        asyncio.run(serve(settings, accounts))
    except Exception:
        log.exception("bench account worker failed")
        code = 1
    hard_exit(code)


if __name__ == "__main__":
    main()
