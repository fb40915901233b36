"""Maintenance activities: exchange sync (account queue), paper reconciliation and phantom-short
cleanup (main queue, database only). Each run stores its report in `maintenance_runs`.

Dry run by default: detection writes only its report. `apply` (--fix / --confirm) repairs, in
one transaction, and audits every repair; the positions it closed are returned so the
workflow can tell their position workflows.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from temporalio import activity

from activities.common import gateway_for, read_failure
from activities.deps import Deps
from egis import metrics
from egis.db import maintenance as mdb
from egis.exchanges.base import ExchangeCallError
from egis.models import MaintenanceInput, MaintenanceReport, SyncInput, SyncReport
from egis.rules import reconcile
from egis.rules.sync import TheirPosition, diff_account

log = logging.getLogger("egis.maintenance")


class MaintenanceActivities:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @activity.defn(name="sync_account")
    async def sync_account(self, request: SyncInput) -> SyncReport:
        """Compare the account's open positions with ours: ONE positions request per account."""
        gateway = await gateway_for(self.deps, request.exchange, request.account)
        try:
            theirs = await gateway.fetch_positions()
        except ExchangeCallError as exc:
            raise read_failure(exc) from None
        async with self.deps.engine.connect() as conn:
            ours = await mdb.account_positions(conn, request.exchange.value, request.account)
        steps = {p.symbol: (await gateway.market(p.symbol)).amount_step for p in ours}
        findings = diff_account(
            ours,
            [TheirPosition(p.symbol, p.side.value, p.quantity) for p in theirs],
            steps,
            datetime.now(UTC),
            self.deps.settings.sync_grace_seconds,
        )
        report = SyncReport(
            run_id=0,
            exchange=request.exchange,
            account=request.account,
            found=findings.counts(),
            ghosts=[
                {"position_id": g.position_id, "workflow_id": g.workflow_id, "symbol": g.symbol, "side": g.side}
                for g in findings.ghosts
            ],
            drifts=[
                {
                    "position_id": d.position.position_id,
                    "workflow_id": d.position.workflow_id,
                    "symbol": d.position.symbol,
                    "ours": str(d.position.open_quantity),
                    "exchange": str(d.exchange_quantity),
                }
                for d in findings.drifts
            ],
            orphans=[{"symbol": o.symbol, "side": o.side, "quantity": str(o.quantity)} for o in findings.orphans],
        )
        for kind, count in report.found.items():
            if count:
                metrics.SYNC_FINDINGS.labels(request.exchange.value, kind).inc(count)
        for orphan in report.orphans:
            log.warning("%s/%s: orphan on the exchange, not adopted: %s", request.exchange, request.account, orphan)
        rows = [
            *({"kind": "ghost", **g} for g in report.ghosts),
            *({"kind": "quantity_drift", **d} for d in report.drifts),
            *({"kind": "orphan", **o} for o in report.orphans),
        ]
        async with self.deps.engine.begin() as conn:
            run_id = await mdb.start_run(conn, "exchange_sync", "observe", request.actor)
            await mdb.finish_run(conn, run_id, report.found, rows)
        return report.model_copy(update={"run_id": run_id})

    @activity.defn(name="reconcile_paper")
    async def reconcile_paper(self, request: MaintenanceInput) -> MaintenanceReport:
        mode = "fix" if request.apply else "dry_run"
        async with self.deps.engine.begin() as conn:
            run_id = await mdb.start_run(conn, "reconcile_paper", mode, request.actor)
            pairs = await mdb.paper_mismatches(conn)
            rows: list[dict[str, Any]] = []
            found: dict[str, int] = {}
            to_tell: list[str] = []
            for pair in pairs:
                for kind in reconcile.kinds(pair):
                    found[kind] = found.get(kind, 0) + 1
                    rows.append(
                        {
                            "kind": kind,
                            "position_id": pair.position_id,
                            "paper_id": pair.paper_id,
                            "action": reconcile.ACTIONS[kind],
                        }
                    )
                    if request.apply:
                        told = await mdb.repair_pair(
                            conn, pair, kind, actor=f"reconcile:{request.actor}", run_id=run_id
                        )
                        if told:
                            to_tell.append(told)
            await mdb.finish_run(conn, run_id, found, rows)
        for kind, count in found.items():
            metrics.MAINTENANCE_FINDINGS.labels("reconcile_paper", kind).inc(count)
        return MaintenanceReport(
            run_id=run_id,
            kind="reconcile_paper",
            mode=mode,
            found=found,
            rows=rows,
            debug=[reconcile.explain(p) for p in pairs] if request.debug else [],
            repaired=len(rows) if request.apply else 0,
            to_tell=to_tell,
        )

    @activity.defn(name="cleanup_phantom_shorts")
    async def cleanup_phantom_shorts(self, request: MaintenanceInput) -> MaintenanceReport:
        mode = "confirm" if request.apply else "dry_run"
        async with self.deps.engine.begin() as conn:
            run_id = await mdb.start_run(conn, "cleanup_phantom_shorts", mode, request.actor)
            matches = await mdb.phantom_matches(conn)
            to_tell = []
            if request.apply:
                for match in matches:
                    closed = await mdb.close_phantom(conn, match, actor=f"cleanup:{request.actor}", run_id=run_id)
                    if closed.get("workflow_id"):
                        to_tell.append(closed["workflow_id"])
            debug = await mdb.phantom_debug(conn) if request.debug else []
            rows = [
                {
                    "short_id": m["short_id"],
                    "long_id": m["long_id"],
                    "bot": m["bot"],
                    "symbol": m["symbol"],
                    "short_quantity": m["short_quantity"],
                    "entry_price": m["entry_price"],
                    "size_usd": m["size_usd"],
                    "gap_seconds": abs((m["short_created_at"] - m["long_closed_at"]).total_seconds()),
                }
                for m in matches
            ]
            found = {"phantom_short": len(matches)}
            await mdb.finish_run(conn, run_id, found, rows)
        if matches:
            metrics.MAINTENANCE_FINDINGS.labels("cleanup_phantom_shorts", "phantom_short").inc(len(matches))
        return MaintenanceReport(
            run_id=run_id,
            kind="cleanup_phantom_shorts",
            mode=mode,
            found=found,
            rows=rows,
            debug=debug,
            repaired=len(matches) if request.apply else 0,
            to_tell=to_tell,
        )
