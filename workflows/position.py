"""PositionWorkflow: one durable workflow per position, from the open order to the close.

1. Open: resolve the bot, price and size the order (nothing written yet), reserve budget and
   insert the position with its OPEN order in one transaction, submit idempotently, record
   the fill. A refusal before the reservation fails the workflow with a typed error and
   writes nothing; a permanent exchange refusal after it ends the position as `failed`.
2. Watch: wait for a close request, an exit trigger or a sync hint, with durable timers only.
   Aged positions are watched by their account's PriceWatchWorkflow (one tickers request per
   account per tick). History stays bounded with continue-as-new.
3. Close: the close activity verifies on the exchange first (ghost / quantity mismatch) and
   classifies errors; a PERMANENT refusal leaves the position open, waiting for an operator.
4. Manual close: signal `close`, update `request_close` (validated), query `state`.

For the web UI: the start carries a static summary and details (egis.client), the workflow keeps
its current details (markdown: status, quantity, prices, PnL, error, aged phase, what it waits
for) up to date, and every activity and timer has a summary. None of these is part of the
determinism check, so histories recorded without them replay. Versioning: AUTO_UPGRADE (a
position can outlive a deploy; its changes must replay: `egis replay`).

Deterministic orchestration only: all I/O is in activities, called by name.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from temporalio import workflow
from temporalio.common import Priority, RetryPolicy, VersioningBehavior
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from egis.models import (
        FINAL_STATUSES,
        SA_BOT_ID,
        SA_EXCHANGE,
        SA_POSITION_SIDE,
        SA_POSITION_STATUS,
        SA_SYMBOL,
        BotContext,
        CloseFailedInput,
        CloseInput,
        CloseOutcomeKind,
        CloseRequest,
        CloseResult,
        ExitTrigger,
        ExternalClose,
        ObserveInput,
        ObserveResult,
        OpenInput,
        OpenPlan,
        OrderOutcome,
        PlaceOrderInput,
        PlanOpenInput,
        PositionResult,
        PositionStatus,
        PositionView,
        PositionWorkflowInput,
        ReservedPosition,
        ReserveInput,
        SyncHint,
        WatcherInput,
        account_task_queue,
        excerpt,
        plain,
        position_summary,
        usd,
    )
    from egis.rules.aged import aged_phase

DB_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=500), maximum_interval=timedelta(seconds=30))
"""Database work: retry until PostgreSQL is back (typed refusals are non-retryable anyway)."""
READ_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
ORDER_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=60))
"""TRANSIENT exchange errors are retried with backoff; VERIFY and PERMANENT are settled inside the activity."""
OPEN_DEADLINE = timedelta(minutes=2)
"""An open that cannot complete within this is abandoned (after a last look-up): no stale entries."""
WATCH_RECHECK = timedelta(hours=2)
"""How often an aged position makes sure its account's price watcher is running (plus up to
WATCH_RECHECK_SPREAD, drawn per position): a backstop (a watcher ended by hand), since the watcher
no longer ends while its account has aged positions (workflows/price_watch.py). 2,000 aged
positions of one account re-checking every 30 minutes woke about one workflow (a replay, an
activity, a start request) a second, in bursts as they had aged together."""
WATCH_RECHECK_SPREAD = timedelta(minutes=30)
WATCH_RECHECK_BEFORE = timedelta(minutes=30)
RARE_RECHECK = "watch-recheck-2h"
"""Patch: WATCH_RECHECK and its spread; 30 minutes sharp before it."""
LEAN = "lean-lifecycle"
"""Patch: the open in one activity, no search-attribute upsert for the passing `closing` status,
the memo written once the position is final (the UI's current details carry the live state).
Runs recorded before it replay the old path."""
HINT_WHILE_OPENING = "hint-while-opening"
"""Patch: a sync hint that arrives while the open settles is kept (it was dropped)."""
CLOSE_FIRST = Priority(priority_key=1)
"""A close goes ahead of everything else waiting on its rate-limited account queue (plans, syncs,
aged checks: the default 3); an open (2) ahead of the maintenance reads. Lower runs first."""
OPEN_NEXT = Priority(priority_key=2)
LIVE = (PositionStatus.OPENING, PositionStatus.OPEN)
ENDED = ("closed", "failed", "rejected")


def _is(value: object, model: type, handler: str) -> bool:
    """Handlers never raise: a payload that is not the expected model (JSON null decodes to
    None, bypassing validation) is logged and ignored instead of failing every workflow task."""
    if isinstance(value, model):
        return True
    workflow.logger.warning("%s: ignored a payload that is not a %s: %s", handler, model.__name__, excerpt(value))
    return False


def _num(value: object) -> str:
    """Money and quantities as plain decimals (60000, never 6E+4); '?' when unknown."""
    return format(value, "f") if isinstance(value, Decimal) else "?"


def _at(moment: datetime) -> str:
    return moment.strftime("%H:%M:%S UTC") if moment.second else moment.strftime("%H:%M UTC")


@workflow.defn(versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class PositionWorkflow:
    @workflow.init
    def __init__(self, state: PositionWorkflowInput) -> None:
        self._s = state.model_copy(deep=True)
        self._last_close: CloseResult | None = None
        self._close_seq = 0
        self._exit_reason: str | None = None
        self._exit_price = None
        self._pnl = None
        self._aged_phase: str | None = None
        self._watch_ensured_at = None
        self._recheck = WATCH_RECHECK_BEFORE  # set at each ensure
        self._waiting = "the workflow to start"
        self._lean = False  # decided at the start of run (the patch LEAN)
        self._indexed: str | None = "opening" if state.bot_context is not None and state.context is None else None
        self._refusal: ApplicationError | None = None

    # ------------------------------------------------------------------ handlers
    @workflow.query(description="What the workflow believes about its position (status, quantity, prices, PnL).")
    def state(self) -> PositionView:
        r = self._s.request
        return PositionView(
            workflow_id=workflow.info().workflow_id,
            bot=r.bot,
            symbol=r.symbol,
            side=r.side,
            status=self._s.status,
            exchange=self._s.context.exchange if self._s.context else None,
            position_id=self._s.position_id,
            quantity=self._s.quantity,
            entry_price=self._s.entry_price,
            exit_price=self._exit_price,
            realized_pnl=self._pnl,
            exit_reason=self._exit_reason,
            opened_at=self._s.opened_at,
            aged_phase=self._aged_phase,
            close_attempts=self._s.close_attempts,
            last_error=self._s.last_error,
        )

    @workflow.signal(
        description='Close the position, fire-and-forget: {"reason": "manual"}. Prefer the request_close update, '
        "which validates the request and answers with the outcome."
    )
    def close(self, request: CloseRequest) -> None:
        """Fire-and-forget close (works from the web UI and `temporal workflow signal`)."""
        if not _is(request, CloseRequest, "close"):
            return
        if self._s.status in LIVE and self._s.pending_close is None:
            self._s.pending_close = request
        else:
            workflow.logger.info("close signal ignored: position is %s", self._s.status)

    @workflow.update(
        description='Close the position and wait for the outcome: {"reason": "manual"} (lowercase words). '
        "Refused with the reason when the position is not open or a close is already pending."
    )
    async def request_close(self, request: CloseRequest) -> CloseResult:
        """Close and wait for the outcome."""
        seq = self._close_seq
        self._s.pending_close = request
        await workflow.wait_condition(lambda: self._close_seq > seq or self._s.status in ENDED)
        if self._last_close is not None and self._close_seq > seq:
            return self._last_close
        return CloseResult(
            position_id=self._s.position_id,
            outcome=CloseOutcomeKind.ALREADY_FINAL,
            status=self._status_enum(),
            exit_reason=self._exit_reason,
            exit_price=self._exit_price,
            realized_pnl=self._pnl,
            error_message=self._s.last_error,
        )

    @request_close.validator
    def _validate_close(self, request: CloseRequest) -> None:
        if not isinstance(request, CloseRequest):
            raise ValueError('invalid close request: expected {"reason": "manual"} (a reason in lowercase words)')
        wid, status = workflow.info().workflow_id, self._s.status
        if status in ("closing", "closed"):
            raise ValueError(f"position {wid} is already {status}")
        if status in ("failed", "rejected"):
            raise ValueError(f"position {wid} is {status}: there is nothing to close")
        if self._s.pending_close is not None:
            raise ValueError(f"position {wid} already has a close request pending ({self._s.pending_close.reason})")

    @workflow.update(
        description="Wait until the open settles and answer with the position (what `egis open` does, in one "
        "call with the start). Fails with the reason when the open is refused."
    )
    async def opened(self) -> PositionView:
        await workflow.wait_condition(lambda: self._s.status != PositionStatus.OPENING)
        if self._refusal is not None:
            raise self._refusal
        return self.state()

    @workflow.signal(
        description="Internal, sent by the exchange-sync job (do not send by hand): the exchange disagrees "
        "with the database about this position; the workflow re-reads it and records what is true."
    )
    def sync_hint(self, hint: SyncHint) -> None:
        """From the exchange-sync job: the exchange disagrees with us; re-read and record."""
        if not _is(hint, SyncHint, "sync_hint"):
            return
        # A hint can only be about a position the database holds open, so one that arrives while
        # this workflow still settles its open (the row open, the open activity's answer not yet
        # processed) is kept and followed once open (the observe re-reads the exchange); it was
        # dropped, and the stream's ghost waited for a re-tell 5 s later.
        if self._s.status == PositionStatus.OPEN or (
            self._s.status == PositionStatus.OPENING and workflow.patched(HINT_WHILE_OPENING)
        ):
            self._s.pending_hint = hint

    @workflow.signal(
        description="Internal, sent by a maintenance repair (do not send by hand): the position's row was "
        "closed by the repair; the workflow reads the final row and ends."
    )
    def external_close(self, notice: ExternalClose) -> None:
        """From a maintenance job that closed this position's row itself (phantom cleanup, reconcile)."""
        if _is(notice, ExternalClose, "external_close"):
            self._s.pending_external = notice

    @workflow.signal(
        description="Internal, sent by the account's price watcher (do not send by hand): this aged "
        "position reached its phase's target; the workflow closes it."
    )
    def exit_trigger(self, trigger: ExitTrigger) -> None:
        """From the account's price watcher: this aged position reached its phase's target."""
        if not _is(trigger, ExitTrigger, "exit_trigger"):
            return
        if self._s.status == PositionStatus.OPEN and self._s.pending_close is None:
            self._s.pending_close = CloseRequest(reason=f"aged_{trigger.phase}")
            self._aged_phase = trigger.phase

    # ------------------------------------------------------------------ run
    @workflow.run
    async def run(self, state: PositionWorkflowInput) -> PositionResult:
        self._lean = workflow.patched(LEAN)
        if self._s.context is None:
            refused = await self._open()
            if refused is not None:
                return refused
        return await self._watch()

    def _status_enum(self) -> PositionStatus:
        try:
            return PositionStatus(self._s.status)
        except ValueError:
            return PositionStatus.FAILED

    def _set_status(self, status: str) -> None:
        self._s.status = status
        if self._lean:
            # the search attribute follows the statuses people filter on (not the passing
            # `closing`); the memo is written once, when final; the current details say the rest
            if status not in (PositionStatus.CLOSING, self._indexed):
                workflow.upsert_search_attributes([SA_POSITION_STATUS.value_set(status)])
                self._indexed = status
            if status in ENDED:
                workflow.upsert_memo({"summary": self._summary()})
            self._show("nothing: the position is final" if status in ENDED else None)
            return
        workflow.upsert_search_attributes([SA_POSITION_STATUS.value_set(status)])
        workflow.upsert_memo({"summary": self._summary()})
        self._show("nothing: the position is final" if status in ENDED else None)

    def _summary(self) -> str:
        r = self._s.request
        parts = [f"{r.bot}: {r.side} {r.symbol} ${r.usd}", self._s.status]
        if self._s.quantity is not None:
            parts.append(f"qty {_num(self._s.quantity)} @ {_num(self._s.entry_price)}")
        if self._exit_reason:
            parts.append(f"{self._exit_reason} @ {_num(self._exit_price)}")
        if self._s.last_error:
            parts.append(f"error: {self._s.last_error[:80]}")
        return " | ".join(parts)

    def _show(self, waiting: str | None = None) -> None:
        """The current details on the web UI's User Metadata tab (markdown; no history event)."""
        if waiting is not None:
            self._waiting = waiting
        s, r = self._s, self._s.request
        ctx = s.context or s.bot_context
        where = f" on {ctx.exchange.value}/{ctx.account}" if ctx else ""
        qty = f" {plain(s.quantity)}" if s.quantity is not None else ""
        rows = [
            ("status", s.status),
            ("quantity", plain(s.quantity)),
            ("entry price", plain(s.entry_price)),
            ("exit price", plain(self._exit_price)),
            ("realized PnL", plain(self._pnl)),
            ("exit reason", self._exit_reason or "—"),
            ("aged phase", self._aged_phase or "—"),
            ("close attempts", str(s.close_attempts)),
            ("last error", s.last_error[:300].replace("\n", " ") if s.last_error else "—"),
            ("position id", plain(s.position_id)),
        ]
        items = "\n".join(f"- **{k}**: {v}" for k, v in rows)
        workflow.set_current_details(
            f"**{s.status}**: {r.side.value}{qty} {r.symbol}{where} ({position_summary(r)})\n\n"
            f"{items}\n\n**Waiting for:** {self._waiting}\n"
        )

    def _account_queue(self) -> str:
        ctx = self._s.context
        assert ctx is not None
        return account_task_queue(workflow.info().task_queue, ctx.exchange, ctx.account)

    async def _refuse(self, error: ActivityError, stage: str) -> PositionResult:
        cause = error.cause
        message = cause.message if isinstance(cause, ApplicationError) else str(error)
        kind = cause.type if isinstance(cause, ApplicationError) and cause.type else "OpenRefused"
        self._s.last_error = f"{stage}: {message}"
        self._refusal = ApplicationError(f"{stage}: {message}", type=kind, non_retryable=True)
        self._set_status("rejected")
        if self._lean:  # the `opened` update answers with the refusal before the run fails
            await workflow.wait_condition(workflow.all_handlers_finished)
        raise self._refusal

    async def _open(self) -> PositionResult | None:
        r = self._s.request
        if self._s.bot_context is not None:
            # started by egis.client, which read the bot and set every search attribute at start;
            # a stale context is caught by reserve_position, which checks the bot's row again
            ctx = self._s.bot_context
            if not self._lean:  # the client set every search attribute at start
                self._set_status(PositionStatus.OPENING)
            else:
                self._show()
        else:  # started by hand (web UI, temporal CLI), or recorded before the client sent it
            workflow.upsert_search_attributes(
                [SA_BOT_ID.value_set(r.bot), SA_SYMBOL.value_set(r.symbol), SA_POSITION_SIDE.value_set(r.side.value)]
            )
            self._set_status(PositionStatus.OPENING)
            try:
                ctx = await workflow.execute_activity(
                    "resolve_bot",
                    r.bot,
                    result_type=BotContext,
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=DB_RETRY,
                    summary=f"read bot {r.bot} (started by hand)",
                )
            except ActivityError as exc:
                return await self._refuse(exc, "unknown bot")
            workflow.upsert_search_attributes([SA_EXCHANGE.value_set(ctx.exchange.value)])
        self._s.context = ctx
        where = f"{ctx.exchange.value}/{ctx.account}"
        self._show(f"the open on {where}: price and size, reserve the budget, send the order")
        if self._lean:
            outcome = await self._open_in_one(ctx, where)
            if outcome is None:
                return None  # refused: _refuse raised
            return self._opened(outcome)
        try:
            plan = await workflow.execute_activity(
                "plan_open",
                PlanOpenInput(exchange=ctx.exchange, account=ctx.account, symbol=r.symbol, usd=r.usd),
                result_type=OpenPlan,
                task_queue=self._account_queue(),
                start_to_close_timeout=timedelta(seconds=30),
                schedule_to_close_timeout=OPEN_DEADLINE,
                retry_policy=READ_RETRY,
                summary=f"price and size {usd(r.usd)} of {r.symbol} on {where}; check the account holds nothing",
            )
            reserved = await workflow.execute_activity(
                "reserve_position",
                ReserveInput(
                    workflow_id=workflow.info().workflow_id,
                    bot=r.bot,
                    symbol=r.symbol,
                    side=r.side,
                    usd=r.usd,
                    quantity=plan.quantity,
                    exchange=ctx.exchange,
                    account=ctx.account,
                ),
                result_type=ReservedPosition,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=DB_RETRY,
                summary=f"reserve {usd(r.usd)} of {r.bot}'s budget; position {plain(plan.quantity)} {r.symbol}",
            )
        except ActivityError as exc:
            return await self._refuse(exc, "open refused")
        self._s.position_id = reserved.position_id
        order = PlaceOrderInput(order_id=reserved.order_id)
        try:
            outcome = await workflow.execute_activity(
                "place_open_order",
                order,
                result_type=OrderOutcome,
                task_queue=self._account_queue(),
                start_to_close_timeout=timedelta(seconds=60),
                heartbeat_timeout=timedelta(seconds=10),
                schedule_to_close_timeout=OPEN_DEADLINE,
                retry_policy=ORDER_RETRY,
                summary=f"send the open order on {where}: {r.side.value} {plain(plan.quantity)} {r.symbol}",
            )
        except ActivityError:
            outcome = await workflow.execute_activity(
                "abandon_open",
                order,
                result_type=OrderOutcome,
                task_queue=self._account_queue(),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=READ_RETRY,
                summary=f"the open did not complete: look the order up on {where}, then give up",
            )
        return self._opened(outcome)

    async def _open_in_one(self, ctx: BotContext, where: str) -> OrderOutcome | None:
        """The lean open: one activity on the account's queue (plan, reserve, send, record). If it
        fails (a refusal, or the deadline), one more activity says whether anything was written:
        nothing -> refused; a reservation -> its order is looked up once, then failed."""
        r = self._s.request
        try:
            outcome = await workflow.execute_activity(
                "open_position",
                OpenInput(
                    workflow_id=workflow.info().workflow_id,
                    bot=r.bot,
                    symbol=r.symbol,
                    side=r.side,
                    usd=r.usd,
                    exchange=ctx.exchange,
                    account=ctx.account,
                ),
                result_type=OrderOutcome,
                task_queue=self._account_queue(),
                start_to_close_timeout=timedelta(seconds=60),
                heartbeat_timeout=timedelta(seconds=10),
                schedule_to_close_timeout=OPEN_DEADLINE,
                retry_policy=ORDER_RETRY,
                priority=OPEN_NEXT,
                summary=f"open {r.side.value} {usd(r.usd)} of {r.symbol} on {where}: check, reserve, send, record",
            )
        except ActivityError as exc:
            settled = await workflow.execute_activity(
                "abandon_open_for",
                workflow.info().workflow_id,
                result_type=OrderOutcome | None,
                task_queue=self._account_queue(),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=READ_RETRY,
                summary=f"the open did not complete: was anything written? look its order up on {where}",
            )
            if settled is None:
                await self._refuse(exc, "open refused")
                return None
            outcome = settled
        self._s.position_id = outcome.position_id
        return outcome

    def _opened(self, outcome: OrderOutcome) -> PositionResult | None:
        if outcome.position_status is PositionStatus.FAILED:
            self._s.last_error = outcome.error_message
            self._set_status(PositionStatus.FAILED)
            self._close_seq += 1
            return PositionResult(
                workflow_id=workflow.info().workflow_id,
                position_id=self._s.position_id,
                status="failed",
                exit_reason="open_failed",
                error=outcome.error_message,
            )
        self._s.quantity = outcome.filled_quantity
        self._s.entry_price = outcome.average_price
        self._s.opened_at = workflow.now()
        self._set_status(PositionStatus.OPEN)
        return None

    async def _watch(self) -> PositionResult:
        while self._s.status not in FINAL_STATUSES:
            if self._s.pending_external is not None:
                await self._finalize_external()
            elif self._s.pending_close is not None:
                await self._close(self._s.pending_close)
            elif self._s.pending_hint is not None:
                await self._observe(self._s.pending_hint)
            else:
                await self._wait()
                continue
            if self._s.status in FINAL_STATUSES:
                break
            self._maybe_continue_as_new()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return PositionResult(
            workflow_id=workflow.info().workflow_id,
            position_id=self._s.position_id,
            status=self._s.status,
            exit_reason=self._exit_reason,
            exit_price=self._exit_price,
            realized_pnl=self._pnl,
            error=self._s.last_error,
        )

    def _idle(self) -> bool:
        return self._s.pending_external is None and self._s.pending_close is None and self._s.pending_hint is None

    def _maybe_continue_as_new(self) -> None:
        """Keep history bounded. Pending requests travel in the state, so this is safe at any
        step, except while an update handler is still waiting for its answer."""
        if workflow.info().is_continue_as_new_suggested() and workflow.all_handlers_finished():
            workflow.continue_as_new(self._s)

    def _wake_in(self) -> timedelta | None:
        """Until the next thing a timer must do: start watching at max age, then re-check."""
        ctx = self._s.context
        if ctx is None or ctx.aged is None or self._s.opened_at is None or self._s.status != PositionStatus.OPEN:
            return None
        age = (workflow.now() - self._s.opened_at).total_seconds()
        phase = aged_phase(ctx.aged, age)
        self._aged_phase = phase.phase
        if phase.phase == "none":
            return timedelta(seconds=max(phase.seconds_to_next or 0, 0.001))
        if self._watch_ensured_at is None:
            return timedelta(0)
        return max(self._recheck - (workflow.now() - self._watch_ensured_at), timedelta(0))

    async def _wait(self) -> None:
        wake = self._wake_in()
        if wake is not None and wake <= timedelta(0):
            await self._ensure_watcher()
            return
        timer = None
        waiting = "a close request (update `request_close` or signal `close`) or an exchange-sync hint"
        if wake is not None:
            at = _at(workflow.now() + wake)
            if self._aged_phase == "none":
                timer = f"wait until aged at {at}"
                waiting += f"; aged at {at}, then the account's price watcher"
            else:
                timer = f"re-check the price watcher at {at}"
                waiting += f"; an exit trigger from the price watcher ({self._aged_phase} phase)"
        self._show(waiting)
        try:
            await workflow.wait_condition(lambda: not self._idle(), timeout=wake, timeout_summary=timer)
        except TimeoutError:
            if self._wake_in() is not None and self._aged_phase != "none":
                await self._ensure_watcher()
        self._maybe_continue_as_new()

    async def _ensure_watcher(self) -> None:
        ctx = self._s.context
        assert ctx is not None
        await workflow.execute_activity(
            "ensure_price_watcher",
            WatcherInput(exchange=ctx.exchange, account=ctx.account),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=DB_RETRY,
            summary=f"aged: make sure the price watcher of {ctx.exchange.value}/{ctx.account} runs",
        )
        self._watch_ensured_at = workflow.now()
        self._recheck = WATCH_RECHECK_BEFORE
        if workflow.patched(RARE_RECHECK):  # spread: positions that aged together do not re-check together
            spread = workflow.random().uniform(0, WATCH_RECHECK_SPREAD.total_seconds())
            self._recheck = WATCH_RECHECK + timedelta(seconds=round(spread))

    def _apply(self, result: CloseResult) -> None:
        self._exit_reason = result.exit_reason
        self._exit_price = result.exit_price
        self._pnl = result.realized_pnl
        if result.closed_quantity is not None and self._s.quantity is not None and result.status == "closed":
            self._s.quantity = max(self._s.quantity, result.closed_quantity)

    async def _close(self, request: CloseRequest) -> None:
        self._set_status(PositionStatus.CLOSING)
        assert self._s.position_id is not None
        result: CloseResult | None = None
        failed: str | None = None
        ctx = self._s.context
        where = f"{ctx.exchange.value}/{ctx.account}" if ctx else "the exchange"
        for _ in range(5):  # a partial fill (the exchange capped the reduce-only order) closes again
            self._s.close_attempts += 1
            failed = None
            self._show(f"the close on {where} ({request.reason}), attempt {self._s.close_attempts}")
            try:
                result = await workflow.execute_activity(
                    "close_position",
                    CloseInput(position_id=self._s.position_id, reason=request.reason, attempt=self._s.close_attempts),
                    result_type=CloseResult,
                    task_queue=self._account_queue(),
                    start_to_close_timeout=timedelta(seconds=120),
                    heartbeat_timeout=timedelta(seconds=10),
                    retry_policy=ORDER_RETRY,
                    priority=CLOSE_FIRST if self._lean else Priority.default,
                    summary=f"verify on {where}, then close ({request.reason}, attempt {self._s.close_attempts})",
                )
            except ActivityError as exc:
                cause = exc.cause
                failed = (cause.message if isinstance(cause, ApplicationError) else str(exc)) or "close failed"
                break
            if result.status != PositionStatus.CLOSING:
                break
        if (failed is not None or (result is not None and result.status == PositionStatus.CLOSING)) and (
            workflow.patched("close-failure-reopens-db")
        ):
            # the database must not go on saying `closing` about a position nobody is closing
            result = await workflow.execute_activity(
                "close_failed",
                CloseFailedInput(
                    position_id=self._s.position_id,
                    error=failed or f"still closing after {self._s.close_attempts} close attempts",
                ),
                result_type=CloseResult,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=DB_RETRY,
                summary="the close did not complete: retire unsent orders, position back to open",
            )
        elif failed is not None:
            result = CloseResult(
                position_id=self._s.position_id,
                outcome=CloseOutcomeKind.FAILED,
                status=PositionStatus.OPEN,
                error_message=failed,
            )
        assert result is not None
        self._s.pending_close = None
        self._apply(result)
        if result.status in FINAL_STATUSES:
            self._s.last_error = None
            self._set_status(result.status)
        else:
            self._s.last_error = result.error_message or "close did not complete"
            self._set_status(PositionStatus.OPEN)  # waiting for an operator; a new close request retries
        self._last_close = result
        self._close_seq += 1

    async def _observe(self, hint: SyncHint) -> None:
        self._s.pending_hint = None
        assert self._s.position_id is not None
        result = await workflow.execute_activity(
            "observe_position",
            ObserveInput(position_id=self._s.position_id, hint=hint),
            result_type=ObserveResult,
            task_queue=self._account_queue(),
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=READ_RETRY,
            summary=f"exchange sync says {hint.kind.replace('_', ' ')}: re-read the position and record it",
        )
        if result.status in FINAL_STATUSES:
            await self._finalize_external()

    async def _finalize_external(self) -> None:
        self._s.pending_external = None
        assert self._s.position_id is not None
        result = await workflow.execute_activity(
            "position_status",
            self._s.position_id,
            result_type=CloseResult,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=DB_RETRY,
            summary="read the final row (closed by the exchange or a maintenance repair)",
        )
        if result.status in FINAL_STATUSES:
            self._apply(result)
            self._s.pending_close = None
            self._set_status(result.status)
            self._last_close = result
            self._close_seq += 1


@workflow.defn(name="PositionWorkflow")
class UnversionedPositionWorkflow(PositionWorkflow):
    """PositionWorkflow for workers without a build id (workflows/registry.py says why)."""

    @workflow.init
    def __init__(self, state: PositionWorkflowInput) -> None:
        super().__init__(state)

    @workflow.run
    async def run(self, state: PositionWorkflowInput) -> PositionResult:
        return await super().run(state)
