"""Section 6: open latency, and what the exchange check before an open costs.

Egis: `EgisClient.open_position(wait=...)` (what `egis open` does) on a fresh Binance slot, until
it returns the open position (filled and recorded). Baselines, interleaved one by one:
(a) an update-with-start -> no-op activity round trip (`PingWorkflow` started by
    `execute_update_with_start_workflow`): the cheapest "start something and get an answer" on
    the same server and worker;
(b) the one read every open now makes before anything is written (issue 11: the account's
    position in the symbol), `CcxtGateway.fetch_symbol_positions` called directly in the
    benchmark's process against the same simulator: the extra read's own cost.
The opened positions are closed afterwards (not timed).
"""

from __future__ import annotations

import uuid

from temporalio.client import WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy

from activities.deps import Deps
from bench.baseline import BASELINE_QUEUE, PingWorkflow
from bench.config import Sizes
from bench.env import POSITION_USD, BenchEnv, BenchError
from bench.report import Row, SectionResult
from bench.stats import summary, timed
from egis.models import CloseRequest, OpenPositionInput, Side

NAME = "6 open"


async def run(env: BenchEnv, sizes: Sizes) -> SectionResult:
    slots = env.slots("op")[: sizes.opens]
    deps = Deps.build(env.settings, env.client.engine)
    latencies: dict[str, list[float]] = {"egis": [], "uws": [], "read": []}
    opened: list[str] = []
    try:
        gateways = {}
        for account in {slot.account for slot in slots}:
            gateways[account.ref] = await deps.gateways.get(account.exchange, account.ref)
            await gateways[account.ref].load_markets()
        await _update_with_start(env)  # warm-up, not timed
        for i, slot in enumerate(slots):
            request = OpenPositionInput(
                bot=slot.account.ref, symbol=slot.symbol, side=Side.LONG, usd=POSITION_USD, ref=f"open-{i}"
            )
            steps = [
                ("egis", lambda r=request: env.client.open_position(r, wait=120)),
                ("uws", lambda: _update_with_start(env)),
                ("read", lambda s=slot: gateways[s.account.ref].fetch_symbol_positions(s.symbol)),
            ]
            for name, step in steps[i % 3 :] + steps[: i % 3]:
                seconds, result = await timed(step)
                if name == "egis":
                    if result.status != "open":
                        raise BenchError(f"open {i} ended {result.status}: {result.last_error}")
                    opened.append(result.workflow_id)
                latencies[name].append(seconds)
    finally:
        await deps.gateways.close()
    for workflow_id in opened:  # leave the slots empty for later sections
        await env.client.close_position(workflow_id, CloseRequest(reason="bench"), wait=True)
    stats = {name: summary(values, 1000) for name, values in latencies.items()}
    return SectionResult(NAME, _rows(stats), {"latency_ms": stats})


async def _update_with_start(env: BenchEnv) -> int:
    workflow_id = f"uws-{uuid.uuid4().hex[:8]}"
    start = WithStartWorkflowOperation(
        PingWorkflow.run,
        id=workflow_id,
        task_queue=BASELINE_QUEUE,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
    )
    result = await env.temporal.execute_update_with_start_workflow(PingWorkflow.ping, 1, start_workflow_operation=start)
    await env.temporal.get_workflow_handle(workflow_id).signal(PingWorkflow.finish)
    return result


def _rows(stats: dict[str, dict[str, float]]) -> list[Row]:
    uws = "update-with-start -> no-op activity (a)"
    rows = [
        Row(NAME, f"egis open -> filled {pct} (ms)", stats["egis"][pct], stats["uws"][pct], uws)
        for pct in ("p50", "p99")
    ]
    read = "the pre-open position read alone (b)"
    rows.append(Row(NAME, "  exchange check before the open, p50 (ms)", stats["read"]["p50"], None, read))
    rows.append(Row(NAME, "opens (each baseline: as many)", stats["egis"]["n"]))
    return rows
