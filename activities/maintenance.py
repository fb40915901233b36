"""Maintenance activities: exchange sync (account queue), paper reconciliation and phantom-short
cleanup (main queue, database only). Each run stores its report in `maintenance_runs`.

Dry run by default: detection writes only its report. `apply` (--fix / --confirm) repairs, in
one transaction, and audits every repair; the positions it closed are returned so the
workflow can tell their position workflows.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from temporalio import activity

from activities.common import compare_account, gateway_for, read_failure
from activities.deps import Deps
from egis import metrics
from egis.db import maintenance as mdb
from egis.db.schema import stream_status
from egis.db.store import jsonable
from egis.exchanges.base import ExchangeCallError
from egis.models import (
    AccountInput,
    AccountPositions,
    HeldPosition,
    MaintenanceInput,
    MaintenanceReport,
    SyncInput,
    SyncReport,
)
from egis.rules import phantom, reconcile

log = logging.getLogger("egis.maintenance")


class MaintenanceActivities:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @activity.defn(name="sync_account")
    async def sync_account(self, request: SyncInput) -> SyncReport:
        """Compare the account's open positions with ours: ONE positions request per account."""
        try:
            findings = await compare_account(self.deps, request.exchange, request.account)
        except ExchangeCallError as exc:
            raise read_failure(exc) from None
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
                    "ours": format(d.position.open_quantity, "f"),
                    "exchange": format(d.exchange_quantity, "f"),
                }
                for d in findings.drifts
            ],
            orphans=[
                {"symbol": o.symbol, "side": o.side, "quantity": format(o.quantity, "f")} for o in findings.orphans
            ],
        )
        for kind, count in report.found.items():
            if count:
                metrics.SYNC_FINDINGS.labels(request.exchange.value, kind).inc(count)
        if findings.ghosts:
            await self._count_missed_stream_events(request, [g.position_id for g in findings.ghosts])
        metrics.ORPHAN_POSITIONS.labels(request.exchange.value, request.account).set(len(report.orphans))
        for orphan in report.orphans:
            log.warning("%s/%s: orphan on the exchange, not adopted: %s", request.exchange, request.account, orphan)
        rows = [
            *({"kind": "ghost", **g} for g in report.ghosts),
            *({"kind": "quantity_drift", **d} for d in report.drifts),
            *({"kind": "orphan", **o} for o in report.orphans),
        ]
        async with self.deps.engine.begin() as conn:
            scope = f"{request.exchange.value}/{request.account}"
            run_id = await mdb.start_run(conn, "exchange_sync", "observe", request.actor, scope)
            await mdb.finish_run(conn, run_id, report.found, rows)
        return report.model_copy(update={"run_id": run_id})

    async def _count_missed_stream_events(self, request: SyncInput, ghosts: list[int]) -> None:
        """Seed 003: "alert on missed position close events". A ghost the REST sync finds while the
        account's stream has been connected since before the sync's grace period, and that the
        stream never reported, is a close event the stream missed."""
        async with self.deps.engine.connect() as conn:
            row = (
                (
                    await conn.execute(
                        select(stream_status).where(
                            stream_status.c.exchange == request.exchange.value,
                            stream_status.c.account == request.account,
                        )
                    )
                )
                .mappings()
                .one_or_none()
            )
        if row is None or not row["connected"] or row["connected_since"] is None:
            return
        connected_for = (datetime.now(UTC) - row["connected_since"]).total_seconds()
        if connected_for < max(30.0, 2 * self.deps.settings.sync_grace_seconds):
            return  # just (re)connected: its gap-fill is still catching up
        missed = [p for p in ghosts if p not in set(row["reported"] or [])]
        if missed:
            metrics.STREAM_MISSED_EVENTS.labels(request.exchange.value, request.account).inc(len(missed))
            log.warning(
                "%s/%s: the stream was connected but never reported ghost position(s) %s",
                request.exchange,
                request.account,
                missed,
            )

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

    @activity.defn(name="phantom_accounts")
    async def phantom_accounts(self, _: MaintenanceInput) -> list[str]:
        """The accounts whose seed-rule matches need an exchange read before any repair."""
        async with self.deps.engine.connect() as conn:
            return await mdb.phantom_accounts(conn)

    @activity.defn(name="read_account_positions")
    async def read_account_positions(self, request: AccountInput) -> AccountPositions:
        """ONE positions request for the account (account queue): evidence for a repair."""
        gateway = await gateway_for(self.deps, request.exchange, request.account)
        try:
            held = await gateway.fetch_positions()
        except ExchangeCallError as exc:
            raise read_failure(exc) from None
        return AccountPositions(
            exchange=request.exchange,
            account=request.account,
            positions=[HeldPosition(symbol=p.symbol, side=p.side, quantity=p.quantity) for p in held],
        )

    @activity.defn(name="cleanup_phantom_shorts")
    async def cleanup_phantom_shorts(self, request: MaintenanceInput) -> MaintenanceReport:
        """Seed 000's rule finds the matches; only those proven not real are closed
        (`egis.rules.phantom.verdict`): never a position Egis opened through a filled OPEN
        order, never one whose account holds a short nothing else accounts for, never one
        whose account could not be read."""
        mode = "confirm" if request.apply else "dry_run"
        evidence = {
            read.account: phantom.AccountEvidence(
                tuple(phantom.Held(p.symbol, p.side.value, p.quantity) for p in read.positions), read.error
            )
            for read in request.exchange_reads
        }
        async with self.deps.engine.begin() as conn:
            run_id = await mdb.start_run(conn, "cleanup_phantom_shorts", mode, request.actor)
            matches = await mdb.phantom_matches(conn)
            shorts = await mdb.live_shorts(conn, phantom.EXCHANGE, sorted({m["account"] for m in matches}))
            unproven = {m["short_id"] for m in matches if m["opened_by"] is None}
            to_tell: list[str] = []
            rows: list[dict[str, Any]] = []
            found = dict.fromkeys(PHANTOM_KINDS, 0)
            for m in matches:
                others = sum(
                    (
                        s["open_quantity"]
                        for s in shorts
                        if s["account"] == m["account"]
                        and s["symbol"] == m["symbol"]
                        and s["id"] != m["short_id"]
                        and s["id"] not in unproven
                    ),
                    Decimal(0),
                )
                decided = phantom.verdict(m["symbol"], m["opened_by"], evidence.get(m["account"]), others)
                found[_FOUND_KEY[decided.kind]] += 1
                action = "left open"
                if decided.repair:
                    action = "would close"
                    if request.apply:
                        closed = await mdb.close_phantom(conn, m, actor=f"cleanup:{request.actor}", run_id=run_id)
                        action = "closed"
                        if closed.get("workflow_id"):
                            to_tell.append(closed["workflow_id"])
                rows.append(
                    jsonable(
                        {
                            "short_id": m["short_id"],
                            "long_id": m["long_id"],
                            "bot": m["bot"],
                            "account": m["account"],
                            "symbol": m["symbol"],
                            "short_quantity": m["short_quantity"] - m["short_closed_quantity"],
                            "entry_price": m["entry_price"],
                            "size_usd": m["size_usd"],
                            "gap_seconds": abs((m["short_created_at"] - m["long_closed_at"]).total_seconds()),
                            "verdict": decided.kind,
                            "action": action,
                            "reason": decided.reason,
                        }
                    )
                )
            debug: list[str] = []
            if request.debug:
                debug = await mdb.phantom_debug(conn)
                debug += [f"short {r['short_id']} (match of long {r['long_id']}): {r['reason']}" for r in rows]
                debug += [
                    f"exchange {read.exchange}/{read.account}: "
                    + (f"could not be read: {read.error}" if read.error else f"{len(read.positions)} open positions")
                    for read in request.exchange_reads
                ]
            await mdb.finish_run(conn, run_id, found, rows)
        for kind, count in found.items():
            if count:
                metrics.MAINTENANCE_FINDINGS.labels("cleanup_phantom_shorts", kind).inc(count)
        return MaintenanceReport(
            run_id=run_id,
            kind="cleanup_phantom_shorts",
            mode=mode,
            found=found,
            rows=rows,
            debug=debug,
            repaired=sum(1 for r in rows if r["action"] == "closed"),
            to_tell=to_tell,
        )


_FOUND_KEY = {
    phantom.PHANTOM: "phantom_short",
    phantom.REAL: "real_position",
    phantom.EXCHANGE_HOLDS: "exchange_holds",
    phantom.UNVERIFIED: "unverified",
}
PHANTOM_KINDS = tuple(_FOUND_KEY.values())
"""What a cleanup run reports: proven phantoms (repaired with --confirm), and the seed-rule
matches it leaves alone, by why."""
