"""A small typed client for bots and the CLI.

    async with EgisClient.from_settings(Settings()) as egis:
        await egis.create_bot(BotSpec(name="alpha", exchange="paper", account="paper-1", budget_usd=1000))
        print(await egis.budget("alpha"))

Reads (positions, budget) come from the database, the single source of truth. Anything that
changes a position goes through its workflow.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from egis.config import Settings
from egis.db.engine import make_engine
from egis.db.store import Store
from egis.errors import (
    EgisError,
    InvalidInput,
    InvalidTransition,
    PositionAlreadyOpen,
    PositionNotFound,
    StackError,
    rebuild,
)
from egis.models import (
    POSITION_WORKFLOW_RE,
    SA_BOT_ID,
    SA_EXCHANGE,
    SA_POSITION_SIDE,
    SA_POSITION_STATUS,
    SA_SYMBOL,
    BotContext,
    BotSpec,
    BotView,
    BudgetView,
    CloseRequest,
    CloseResult,
    Exchange,
    HealthReport,
    MaintenanceInput,
    MaintenanceReport,
    OpenPositionInput,
    PositionView,
    PositionWorkflowInput,
    SyncInput,
    SyncReport,
    excerpt,
    position_static_details,
    position_summary,
    position_workflow_id,
)
from egis.temporal import connect

# How long `egis close` waits for the close's outcome by default (a close that meets a venue's
# back-off can take minutes; the workflow goes on after the wait ends, the answer only says so).
CLOSE_WAIT_SECONDS = 120.0
QUERY_WAIT_SECONDS = 30.0


@dataclass
class EgisClient:
    settings: Settings
    engine: AsyncEngine
    temporal: Client | None

    @classmethod
    def from_settings(cls, settings: Settings, *, temporal: bool = True) -> _Connector:
        return _Connector(settings, temporal)

    @property
    def store(self) -> Store:
        return Store(self.engine)

    def require_temporal(self) -> Client:
        if self.temporal is None:
            raise StackError("this client was opened without a Temporal connection")
        return self.temporal

    # ------------------------------------------------------------ bots and budget
    async def create_bot(self, spec: BotSpec, *, actor: str) -> BotView:
        return await self.store.create_bot(spec, actor=actor)

    async def list_bots(self) -> list[BotView]:
        return await self.store.list_bots()

    async def get_bot(self, name: str) -> BotView:
        return await self.store.get_bot(name)

    async def budget(self, bot: str) -> BudgetView:
        return await self.store.budget(bot)

    async def set_budget(self, bot: str, budget_usd: Decimal, *, actor: str) -> BudgetView:
        BotSpec(name=bot, exchange="paper", account="x", budget_usd=budget_usd)  # validates the amount
        return await self.store.set_budget(bot, budget_usd, actor=actor)

    # ------------------------------------------------------------ positions
    async def open_position(
        self, request: OpenPositionInput, *, wait: float | None = 60.0, started_by: str = "egis.client"
    ) -> PositionView:
        """Start the position's workflow; with `wait`, return once it is open (or raise why not).

        The workflow id comes from (bot, ref): a reference can be used once, so a bot that
        retries its own request can never open the position twice.
        """
        from workflows.position import PositionWorkflow

        bot = await self.get_bot(request.bot)  # an unknown bot is refused before anything starts
        context = BotContext(bot=bot.name, exchange=bot.exchange, account=bot.account, aged=bot.aged)
        workflow_id = position_workflow_id(request.bot, request.ref)
        arg = PositionWorkflowInput(request=request, bot_context=context)
        options: dict[str, Any] = {
            "id": workflow_id,
            "task_queue": self.settings.task_queue,
            "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
            "id_conflict_policy": WorkflowIDConflictPolicy.FAIL,
            # the web UI's User Metadata: `alpha: long BTCUSDT $100, ref sig-42`, and what was asked
            "static_summary": position_summary(request),
            "static_details": position_static_details(request, context, started_by),
            "search_attributes": TypedSearchAttributes(
                [
                    SearchAttributePair(SA_BOT_ID, request.bot),
                    SearchAttributePair(SA_SYMBOL, request.symbol),
                    SearchAttributePair(SA_POSITION_SIDE, request.side.value),
                    SearchAttributePair(SA_POSITION_STATUS, "opening"),
                    SearchAttributePair(SA_EXCHANGE, bot.exchange.value),
                ]
            ),
        }
        temporal = self.require_temporal()
        try:
            if wait is None:  # fire and forget: the start alone
                await temporal.start_workflow(PositionWorkflow.run, arg, **options)
                return PositionView(
                    workflow_id=workflow_id, bot=request.bot, symbol=request.symbol, side=request.side, status="opening"
                )
            # one call: start the workflow and ask it (update `opened`) for the settled position;
            # the answer arrives when the open settles, no polling
            return await self._open_and_wait(arg, options, wait)
        except WorkflowAlreadyStartedError:
            raise PositionAlreadyOpen(
                f"position {workflow_id} was already started: each --ref opens at most one position"
            ) from None
        except WorkflowUpdateFailedError as exc:
            raise _typed_update(exc) from None
        except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
            # not settled within `wait` (e.g. no worker is running; the SDK answers a start whose
            # update was not accepted in time with the latter): say so, no guess
            try:
                await temporal.get_workflow_handle(workflow_id).describe()
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    raise StackError(f"Temporal did not start {workflow_id} within {wait} s") from None
                raise
            return PositionView(
                workflow_id=workflow_id, bot=request.bot, symbol=request.symbol, side=request.side, status="opening"
            )

    async def _open_and_wait(self, arg: PositionWorkflowInput, options: dict[str, Any], wait: float) -> PositionView:
        """Start with the `opened` update and wait up to `wait` seconds for its outcome (TimeoutError
        after that). Once accepted the update is durable, so an outage of the server while waiting
        (a restart, a lost connection) only means polling again. The deadline is carried by the RPC
        timeouts, not by cancelling the call: the SDK turns a cancelled update wait into an error
        that says nothing about whether the open happened."""
        from workflows.position import PositionWorkflow

        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait

        def remaining() -> timedelta:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError
            return timedelta(seconds=left)

        start = WithStartWorkflowOperation(PositionWorkflow.run, arg, **options)
        try:
            update = await self.require_temporal().start_update_with_start_workflow(
                PositionWorkflow.opened,
                start_workflow_operation=start,
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                rpc_timeout=remaining(),
            )
        except BaseException:
            # the SDK also puts the failure on the operation's handle future, which nobody reads:
            # read it, or asyncio prints "Future exception was never retrieved" with a traceback
            # after the typed refusal (e.g. `egis open` with a ref already used)
            handle = getattr(start, "_workflow_handle", None)
            if isinstance(handle, asyncio.Future) and handle.done() and not handle.cancelled():
                handle.exception()
            raise
        while True:
            try:
                return await update.result(rpc_timeout=remaining())
            except WorkflowUpdateRPCTimeoutOrCancelledError:
                remaining()  # past the deadline: TimeoutError; else the poll timed out early: again
            except RPCError as exc:
                if not server_outage(exc):
                    raise
                remaining()
                await asyncio.sleep(min(1.0, wait / 10))  # the server is restarting: poll again

    async def workflow_id_of(self, position: str) -> str:
        """Accept a workflow id (pos-<bot>-<ref>) or a numeric position id."""
        if position.isascii() and position.isdigit() and len(position) <= 19:
            if not 0 < int(position) < 2**63:
                raise InvalidInput(f"position id {position} is out of range")
            row = await self.store.get_position(int(position))
            if not row["workflow_id"]:
                raise PositionNotFound(f"position {position} has no workflow (imported from a legacy system)")
            return row["workflow_id"]
        if not POSITION_WORKFLOW_RE.fullmatch(position):
            raise InvalidInput(f"{excerpt(position)} is neither a position id nor a workflow id (pos-<bot>-<ref>)")
        return position

    async def close_position(
        self, position: str, request: CloseRequest, *, wait: bool = True, timeout: float = CLOSE_WAIT_SECONDS
    ) -> CloseResult | None:
        """Close through the workflow: an update that returns the result (waited for at most
        `timeout` seconds, then a StackError that says the close may be under way), or a
        fire-and-forget signal."""
        from workflows.position import PositionWorkflow

        if not 0 < timeout <= 3600:
            raise InvalidInput(f"close timeout must be 0 < seconds <= 3600, got {timeout}")
        workflow_id = await self.workflow_id_of(position)
        handle = self.require_temporal().get_workflow_handle(workflow_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def remaining() -> timedelta:
            left = deadline - loop.time()
            if left <= 0:
                raise WorkflowUpdateRPCTimeoutOrCancelledError()
            return timedelta(seconds=left)

        try:
            if not wait:
                await handle.signal(PositionWorkflow.close, request)
                return None
            # Every wait carries a deadline: an update the server lost in a restart before it was
            # accepted is otherwise polled for ever (no answer, no error).
            update = await handle.start_update(
                PositionWorkflow.request_close,
                request,
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                rpc_timeout=remaining(),
            )
            while True:
                try:
                    return await update.result(rpc_timeout=remaining())
                except WorkflowUpdateRPCTimeoutOrCancelledError:
                    remaining()  # past the deadline: raised again; else the poll ended early: again
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            raise InvalidTransition(cause.message if isinstance(cause, ApplicationError) else str(exc)) from None
        except WorkflowUpdateRPCTimeoutOrCancelledError:
            # the server cut the wait (a restart, a timeout): the request may have been taken; asking
            # again is safe (a position already closing refuses a second close request)
            raise StackError(
                f"Temporal did not answer the close of {workflow_id} in time: it may be under way; "
                f"ask again or look at `egis positions`"
            ) from None
        except RPCError as exc:
            if "completed" in exc.message.lower():
                raise InvalidTransition(f"position {workflow_id} is finished: there is nothing to close") from None
            if exc.status == RPCStatusCode.NOT_FOUND and not await self._exists(workflow_id):
                raise PositionNotFound(f"no position workflow {workflow_id}") from None
            if server_outage(exc) or exc.status == RPCStatusCode.NOT_FOUND:
                # NOT_FOUND of a workflow that exists: the server lost the request in a restart
                raise StackError(
                    f"Temporal went away while closing {workflow_id} ({exc.message}): the close may be "
                    f"under way; ask again or look at `egis positions`"
                ) from None
            raise

    async def _exists(self, workflow_id: str) -> bool:
        try:
            await self.require_temporal().get_workflow_handle(workflow_id).describe(rpc_timeout=timedelta(seconds=10))
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return True

    async def position_state(self, position: str) -> PositionView:
        from workflows.position import PositionWorkflow

        workflow_id = await self.workflow_id_of(position)
        handle = self.require_temporal().get_workflow_handle(workflow_id)
        # a query waits for a worker to answer: bounded, so no caller waits for ever
        return await handle.query(PositionWorkflow.state, rpc_timeout=timedelta(seconds=QUERY_WAIT_SECONDS))

    async def positions(
        self, *, bot: str | None = None, status: str | None = None, limit: int = 500
    ) -> list[dict[str, Any]]:
        """Positions from the database (the single source of truth), newest first."""
        return await self.store.list_positions(bot=bot, status=status, limit=limit)

    async def orphans(self) -> list[dict[str, Any]]:
        """Positions the exchange holds that no live Egis position accounts for, as each live
        account's most recent exchange sync saw them (never adopted or closed by Egis)."""
        from egis.db.maintenance import latest_runs

        live = {f"{exchange.value}/{account}" for exchange, account in await self.live_accounts()}
        async with self.engine.connect() as conn:
            runs = await latest_runs(conn, "exchange_sync")
        rows = []
        for run in runs:
            if run["scope"] not in live:
                continue
            exchange, _, account = run["scope"].partition("/")
            rows.extend(
                {
                    "exchange": exchange,
                    "account": account,
                    "symbol": item["symbol"],
                    "side": item["side"],
                    "quantity": Decimal(item["quantity"]),
                    "seen_at": run["finished_at"],
                    "sync_run": run["id"],
                }
                for item in run["report"]
                if item.get("kind") == "orphan"
            )
        return rows

    async def streams(self) -> list[dict[str, Any]]:
        """Each live account's private stream, as its status row says (written by the stream activity)."""
        from egis.db.schema import stream_status

        async with self.engine.connect() as conn:
            rows = {
                (r["exchange"], r["account"]): dict(r) for r in (await conn.execute(select(stream_status))).mappings()
            }
        out = []
        for exchange, account in await self.live_accounts():
            row = rows.get((exchange.value, account), {})
            out.append(
                {
                    "exchange": exchange.value,
                    "account": account,
                    "connected": bool(row.get("connected")),
                    "connected_since": row.get("connected_since"),
                    "last_event_at": row.get("last_event_at"),
                    "reconnects": row.get("reconnects", 0),
                    "events": row.get("events", 0),
                    "lag_ms": row.get("lag_ms"),
                    "worker": row.get("worker"),
                    "last_error": row.get("last_error"),
                    "updated_at": row.get("updated_at"),
                }
            )
        return out

    # ------------------------------------------------------------ maintenance
    async def require_worker(self, wait: float = 10.0) -> None:
        """Refuse (instead of waiting forever on a job nobody runs) when no worker polls the main
        task queue within `wait` seconds; a worker that is just starting gets that long."""
        request = DescribeTaskQueueRequest(
            namespace=self.require_temporal().namespace,
            task_queue=TaskQueue(name=self.settings.task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            response = await self.require_temporal().workflow_service.describe_task_queue(request)
            if response.pollers or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)
        if not response.pollers:
            raise StackError(
                f"no worker is polling task queue {self.settings.task_queue!r}: start one with `egis dev up` "
                "or `python worker.py`"
            )

    async def run_job(self, workflow: str, arg: Any, result_type: type[Any], *, timeout: float = 300.0) -> Any:
        """Run a maintenance workflow now, through the worker, and return its report."""
        await self.require_worker()
        return await self.require_temporal().execute_workflow(
            workflow,
            arg,
            id=f"{workflow}-manual-{uuid.uuid4().hex[:10]}",
            task_queue=self.settings.task_queue,
            result_type=result_type,
            execution_timeout=timedelta(seconds=timeout),
        )

    async def live_accounts(self) -> list[tuple[Exchange, str]]:
        """Exchange accounts (not paper) that bots trade on: the ones exchange sync covers."""
        bots = await self.list_bots()
        return sorted({(b.exchange, b.account) for b in bots if b.exchange is not Exchange.PAPER})

    async def sync(self, exchange: Exchange | None = None, account: str | None = None) -> list[SyncReport]:
        accounts = [(exchange, account)] if exchange and account else await self.live_accounts()
        return [
            await self.run_job("ExchangeSyncWorkflow", SyncInput(exchange=ex, account=acct, actor="cli"), SyncReport)
            for ex, acct in accounts
        ]

    async def reconcile_paper(self, *, fix: bool, debug: bool, actor: str) -> MaintenanceReport:
        request = MaintenanceInput(apply=fix, debug=debug, actor=actor)
        return await self.run_job("PaperReconcileWorkflow", request, MaintenanceReport)

    async def cleanup_phantom_shorts(self, *, confirm: bool, debug: bool, actor: str) -> MaintenanceReport:
        request = MaintenanceInput(apply=confirm, debug=debug, actor=actor)
        return await self.run_job("PhantomCleanupWorkflow", request, MaintenanceReport)

    # ------------------------------------------------------------ health
    async def health(self, timeout: float = 30.0) -> HealthReport:
        from workflows.health import HealthWorkflow

        await self.require_worker(wait=timeout)
        return await self.require_temporal().execute_workflow(
            HealthWorkflow.run,
            id=f"health-{uuid.uuid4().hex[:12]}",
            task_queue=self.settings.task_queue,
            execution_timeout=timedelta(seconds=timeout),
        )


def server_outage(exc: RPCError) -> bool:
    """The call failed because the server went away (restarting, unreachable, too slow), not
    because it refused: asking again later is safe. A connection the server drops mid-call (a
    restart while an update is awaited) surfaces from the SDK's core as UNKNOWN "transport error"."""
    if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
        return True
    return exc.status == RPCStatusCode.UNKNOWN and "transport error" in exc.message


def _typed_update(exc: WorkflowUpdateFailedError) -> EgisError:
    cause = exc.cause
    if isinstance(cause, ApplicationError):
        return rebuild(cause.type, cause.message)
    return EgisError(str(cause or exc))


class _Connector:
    """`async with EgisClient.from_settings(...)`: opens the engine (and Temporal), closes them after."""

    def __init__(self, settings: Settings, temporal: bool) -> None:
        self.settings = settings
        self.want_temporal = temporal
        self.client: EgisClient | None = None

    async def __aenter__(self) -> EgisClient:
        engine = make_engine(self.settings.require_database_url(), pool_size=5)
        temporal_client = None
        if self.want_temporal:
            try:
                temporal_client = await connect(self.settings)  # profile / TEMPORAL_* / settings / embedded stack
            except Exception:
                await engine.dispose()
                raise
        self.client = EgisClient(self.settings, engine, temporal_client)
        return self.client

    async def __aexit__(self, *exc: Any) -> None:
        if self.client is not None:
            await self.client.engine.dispose()
