"""Temporal Schedules for the maintenance workflows (`egis schedules ...`).

The worker creates every missing schedule itself, with the safe defaults (`ensure`: at start,
and an account's sync as soon as it discovers the account); it never changes one that exists.
`install` is idempotent too: it creates each schedule, or updates it in place if it exists (to
change the options), so running it again never duplicates. Schedules are visible and controllable in the web UI too.
Ids are prefixed with the main task queue, so several deployments can share a namespace.

- <queue>-sync-<exchange>-<account>: exchange sync for each live-exchange account, every 15 s
- <queue>-reconcile-paper: paper reconciliation, every 5 min (dry run unless --reconcile-fix)
- <queue>-cleanup-phantom-shorts: phantom-short cleanup, hourly (dry run unless --cleanup-confirm)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from egis.errors import InvalidInput
from egis.models import Exchange, MaintenanceInput, SyncInput


@dataclass(frozen=True)
class Options:
    sync_every: timedelta = timedelta(seconds=15)
    reconcile_every: timedelta = timedelta(minutes=5)
    cleanup_every: timedelta = timedelta(hours=1)
    reconcile_fix: bool = False
    cleanup_confirm: bool = False


def desired(
    queue: str, accounts: list[tuple[Exchange, str]], options: Options, *, maintenance: bool = True
) -> dict[str, Schedule]:
    def schedule(workflow: str, arg: Any, workflow_id: str, every: timedelta, note: str) -> Schedule:
        return Schedule(
            action=ScheduleActionStartWorkflow(
                workflow, arg, id=workflow_id, task_queue=queue, execution_timeout=max(every * 4, timedelta(minutes=2))
            ),
            spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
            policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
            state=ScheduleState(note=note),
        )

    schedules = {}
    for exchange, account in accounts:
        sid = f"{queue}-sync-{exchange.value}-{account}"
        schedules[sid] = schedule(
            "ExchangeSyncWorkflow",
            SyncInput(exchange=exchange, account=account),
            sid,
            options.sync_every,
            f"exchange sync of {exchange.value}/{account}: ghosts and drifts to their workflows, orphans reported",
        )
    if not maintenance:
        return schedules
    sid = f"{queue}-reconcile-paper"
    schedules[sid] = schedule(
        "PaperReconcileWorkflow",
        MaintenanceInput(apply=options.reconcile_fix),
        sid,
        options.reconcile_every,
        "paper reconciliation (" + ("fixes" if options.reconcile_fix else "dry run: reports only") + ")",
    )
    sid = f"{queue}-cleanup-phantom-shorts"
    schedules[sid] = schedule(
        "PhantomCleanupWorkflow",
        MaintenanceInput(apply=options.cleanup_confirm),
        sid,
        options.cleanup_every,
        "phantom-short cleanup (" + ("closes matches" if options.cleanup_confirm else "dry run: reports only") + ")",
    )
    return schedules


async def install(
    client: Client, queue: str, accounts: list[tuple[Exchange, str]], options: Options
) -> list[tuple[str, str]]:
    """Create or update every schedule; returns (id, 'created' | 'updated')."""
    done = []
    for sid, schedule in desired(queue, accounts, options).items():
        try:
            await client.create_schedule(sid, schedule)
            done.append((sid, "created"))
        except ScheduleAlreadyRunningError:

            def replace(current: ScheduleUpdateInput, new: Schedule = schedule) -> ScheduleUpdate:
                # new options, but a schedule the operator paused stays paused
                was = current.description.schedule.state
                if was.paused:
                    note = f"{new.state.note}; paused ({was.note or 'by an operator'})"
                    new = dataclasses.replace(new, state=dataclasses.replace(new.state, paused=True, note=note))
                return ScheduleUpdate(schedule=new)

            await client.get_schedule_handle(sid).update(replace)
            done.append((sid, "updated"))
    return done


async def ensure(
    client: Client, queue: str, accounts: list[tuple[Exchange, str]], *, maintenance: bool = True
) -> list[str]:
    """Create each schedule that does not exist yet, with the safe defaults (reconcile without
    --fix, cleanup without --confirm, sync every 15 s); returns the ids created. A schedule that
    exists is never touched: its options, interval and paused state are the operator's. The
    worker calls this at start (maintenance) and whenever it discovers an account (its sync)."""
    created = []
    for sid, schedule in desired(queue, accounts, Options(), maintenance=maintenance).items():
        try:
            await client.create_schedule(sid, schedule)
        except ScheduleAlreadyRunningError:
            continue
        created.append(sid)
    return created


async def list_schedules(client: Client, queue: str) -> list[dict[str, Any]]:
    rows = []
    async for entry in await client.list_schedules():
        if not entry.id.startswith(f"{queue}-"):
            continue
        described = await client.get_schedule_handle(entry.id).describe()
        info = described.info
        rows.append(
            {
                "id": entry.id,
                "paused": described.schedule.state.paused,
                "note": described.schedule.state.note,
                "next_run": info.next_action_times[0] if info.next_action_times else None,
                "runs": info.num_actions,
                "last_run": info.recent_actions[-1].started_at if info.recent_actions else None,
            }
        )
    return sorted(rows, key=lambda r: r["id"])


async def control(client: Client, queue: str, name: str, action: str) -> str:
    """pause | unpause | trigger one schedule, by full id or by its suffix (e.g. reconcile-paper)."""
    sid = name if name.startswith(f"{queue}-") else f"{queue}-{name}"
    known = {row["id"] for row in await list_schedules(client, queue)}
    if sid not in known:
        raise InvalidInput(
            f"no schedule {sid!r}; installed: {', '.join(sorted(known)) or 'none (egis schedules install)'}"
        )
    handle = client.get_schedule_handle(sid)
    if action == "pause":
        await handle.pause(note="paused from the egis CLI")
    elif action == "unpause":
        await handle.unpause(note="unpaused from the egis CLI")
    elif action == "trigger":
        await handle.trigger()
    else:
        raise InvalidInput(f"unknown schedule action {action!r}")
    return sid
