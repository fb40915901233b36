"""Temporal Schedules for the maintenance workflows (`egis schedules ...`).

`install` is idempotent: it creates each schedule, or updates it in place if it exists, so
running it again never duplicates. Schedules are visible and controllable in the web UI too.
Ids are prefixed with the main task queue, so several deployments can share a namespace.

- <queue>-sync-<exchange>-<account>: exchange sync for each live-exchange account, every 15 s
- <queue>-reconcile-paper: paper reconciliation, every 5 min (dry run unless --reconcile-fix)
- <queue>-cleanup-phantom-shorts: phantom-short cleanup, hourly (dry run unless --cleanup-confirm)
"""

from __future__ import annotations

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


def desired(queue: str, accounts: list[tuple[Exchange, str]], options: Options) -> dict[str, Schedule]:
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

            def replace(_: ScheduleUpdateInput, new: Schedule = schedule) -> ScheduleUpdate:
                return ScheduleUpdate(schedule=new)

            await client.get_schedule_handle(sid).update(replace)
            done.append((sid, "updated"))
    return done


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
