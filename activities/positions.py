"""Position activities: open, verified close, observe (sync hints), prices.

Order submission is idempotent: every order has a deterministic client order id; the number
of sends is counted in the database BEFORE each send, so after a crash or an ambiguous error
the next attempt looks the order up by client id instead of sending it again.

Exchange errors go through the classification table (egis.rules.classify):
- TRANSIENT: raise a retryable error; Temporal retries with backoff;
- VERIFY: read the exchange, then decide (the order exists -> record it; the position is
  gone -> ghost path; otherwise retry or give up);
- PERMANENT: record it and return a failed outcome; nothing is retried.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import gateway_for, heartbeating, not_yet, read_failure, transient, typed_failure
from activities.deps import Deps
from egis import faults, metrics
from egis.db import store as db
from egis.db.maintenance import account_positions
from egis.errors import EgisError, HedgeModeAccount, UntrackedExchangePosition
from egis.exchanges.base import ExchangeCallError, Gateway, OrderReport, OrderRequest
from egis.models import (
    BotContext,
    CloseFailedInput,
    CloseInput,
    CloseOutcomeKind,
    CloseResult,
    ErrorClass,
    Exchange,
    Intent,
    ObserveInput,
    ObserveResult,
    OpenInput,
    OpenPlan,
    OrderOutcome,
    OrderSide,
    OrderStatus,
    PlaceOrderInput,
    PlanOpenInput,
    PositionStatus,
    ReservedPosition,
    ReserveInput,
    Side,
)
from egis.rules import submission
from egis.rules.close import CloseDecision, CloseStep, decide_close
from egis.rules.exits import ClosingTrade, exit_from_trades
from egis.rules.sizing import quantities_differ, quantity_for_usd, validate_quantity
from egis.rules.submission import Step
from egis.rules.sync import TheirPosition, untracked

log = logging.getLogger("egis.activities")


def _actor() -> str:
    info = activity.info()
    return f"workflow:{info.workflow_id}"


class PositionActivities:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    # ------------------------------------------------------------ main queue (database only)
    @activity.defn(name="resolve_bot")
    async def resolve_bot(self, bot: str) -> BotContext:
        try:
            view = await self.deps.store.get_bot(bot)
        except EgisError as exc:
            raise typed_failure(exc) from None
        return BotContext(bot=view.name, exchange=view.exchange, account=view.account, aged=view.aged)

    @activity.defn(name="reserve_position")
    async def reserve_position(self, request: ReserveInput) -> ReservedPosition:
        try:
            return await self.deps.store.reserve_position(request, actor=_actor())
        except EgisError as exc:
            raise typed_failure(exc) from None

    @activity.defn(name="position_status")
    async def position_status(self, position_id: int) -> CloseResult:
        """Read a position's state (after a maintenance job closed it behind the workflow's back)."""
        row = await self.deps.store.get_position(position_id)
        return _result_from_row(row, CloseOutcomeKind.ALREADY_FINAL, orders_sent=0)

    # ------------------------------------------------------------ account queues (exchange I/O)
    async def _gateway(self, exchange: Exchange, account: str) -> Gateway:
        return await gateway_for(self.deps, exchange, account)

    @activity.defn(name="plan_open")
    async def plan_open(self, request: PlanOpenInput) -> OpenPlan:
        """Price and size the open BEFORE anything is written: bad symbols and tiny amounts stop here."""
        gateway = await self._gateway(request.exchange, request.account)
        try:
            rules = await gateway.market(request.symbol)
            mode = await gateway.position_mode(request.symbol)
            price = (await gateway.fetch_tickers([request.symbol])).get(request.symbol)
        except ExchangeCallError as exc:
            raise read_failure(exc) from None
        except EgisError as exc:
            raise typed_failure(exc) from None
        if mode == "hedge":
            raise typed_failure(HedgeModeAccount(_hedge_message(request.exchange, request.account)))
        if price is None:
            raise ApplicationError(f"no price for {request.symbol}", type="NoPrice", non_retryable=False)
        try:
            quantity = quantity_for_usd(request.usd, price, rules)
        except EgisError as exc:
            raise typed_failure(exc) from None
        await self._refuse_untracked(gateway, request)
        return OpenPlan(quantity=quantity, price=price, amount_step=rules.amount_step)

    async def _refuse_untracked(self, gateway: Gateway, request: PlanOpenInput) -> None:
        """An open never nets against a position the exchange holds and Egis does not know: read
        the account's position in the symbol first (one request) and refuse if nothing live of
        ours accounts for it. Nothing has been written yet."""
        try:
            held = await gateway.fetch_symbol_positions(request.symbol)
        except ExchangeCallError as exc:
            raise read_failure(exc) from None
        if not held:
            return
        async with self.deps.engine.connect() as conn:
            ours = await account_positions(conn, request.exchange.value, request.account)
        theirs = [TheirPosition(p.symbol, p.side.value, p.quantity) for p in held]
        unknown = untracked(theirs, [p for p in ours if p.symbol == request.symbol])
        if unknown:
            first = unknown[0]
            raise typed_failure(
                UntrackedExchangePosition(
                    f"{request.exchange.value}/{request.account} holds a {first.side} {first.symbol} position of "
                    f"{first.quantity:f} that Egis does not track, and an open would net against it; nothing was "
                    "sent. See it with `egis sync` (or `egis positions --orphans`) and close it on the exchange first",
                    symbol=first.symbol,
                    side=first.side,
                    quantity=format(first.quantity, "f"),
                )
            )

    @activity.defn(name="open_position")
    async def open_position(self, request: OpenInput) -> OrderOutcome:
        """The whole open in one activity on the account's queue: price and size it and check the
        account (nothing written: a refusal here stops the open before anything exists), reserve
        the budget and write the position with its OPEN order (one transaction), send the order
        idempotently and record the fill. A retry after the reservation skips straight to the
        order, which is looked up before any resend."""
        async with heartbeating():
            existing = await self.deps.store.reservation_of(request.workflow_id)
            if existing is not None:  # a retry: the order is looked up before any resend
                outcome = await self._place(existing.order_id)
                return outcome.model_copy(update={"position_id": existing.position_id})
            plan = await self.plan_open(
                PlanOpenInput(
                    exchange=request.exchange, account=request.account, symbol=request.symbol, usd=request.usd
                )
            )
            gateway = await self._gateway(request.exchange, request.account)
            sending = await self._may_send(gateway, request.symbol, plan.quantity, reduce_only=False)
            reserve = ReserveInput(
                workflow_id=request.workflow_id,
                bot=request.bot,
                symbol=request.symbol,
                side=request.side,
                usd=request.usd,
                quantity=plan.quantity,
                exchange=request.exchange,
                account=request.account,
            )
            try:
                written = await self.deps.store.reserve_returning(reserve, actor=_actor(), sending=sending)
            except EgisError as exc:
                raise typed_failure(exc) from None
            outcome = await self._send_open(gateway, written.order, written.position, counted=written.counted)
        return outcome.model_copy(update={"position_id": written.position["id"]})

    @activity.defn(name="abandon_open_for")
    async def abandon_open_for(self, workflow_id: str) -> OrderOutcome | None:
        """The open did not complete in time: None if nothing was ever written (the open is
        refused); otherwise one last look-up of its order by client id, then fail it."""
        existing = await self.deps.store.reservation_of(workflow_id)
        if existing is None:
            return None
        outcome = await self.abandon_open(PlaceOrderInput(order_id=existing.order_id))
        return outcome.model_copy(update={"position_id": existing.position_id})

    @activity.defn(name="place_open_order")
    async def place_open_order(self, request: PlaceOrderInput) -> OrderOutcome:
        """Submit the OPEN order idempotently and record the fill. A PERMANENT refusal ends the
        position as failed (its budget is released by the status change)."""
        async with heartbeating():
            return await self._place(request.order_id)

    async def _place(self, order_id: int) -> OrderOutcome:
        order = await self.deps.store.get_order_row(order_id)
        position = await self.deps.store.get_position(order["position_id"])
        gateway = await self._gateway(Exchange(order["exchange"]), order["account"])
        return await self._send_open(gateway, order, position)

    async def _send_open(
        self, gateway: Gateway, order: dict[str, Any], position: dict[str, Any], *, counted: bool = False
    ) -> OrderOutcome:
        submitted = await self._submit(gateway, order, position, counted=counted)
        if isinstance(submitted, OrderOutcome):
            return submitted
        return await self._fail_open(order, submitted.message, submitted)

    async def _may_send(self, gateway: Gateway, symbol: str, quantity: Decimal, *, reduce_only: bool) -> bool:
        """The checks `_submit` makes before it counts a send (the market takes the quantity; the
        account is not backing off), made before the write that creates the order, so that write
        can count its first send (one transaction less). False: the order is written uncounted and
        `_submit` makes the same checks again, refusing or waiting as it always did."""
        try:
            await _check_before_send(gateway, symbol, quantity, reduce_only=reduce_only)
        except (EgisError, ExchangeCallError):
            return False
        return True

    @activity.defn(name="abandon_open")
    async def abandon_open(self, request: PlaceOrderInput) -> OrderOutcome:
        """The open could not complete in time: one last look-up by client id, then fail it."""
        order = await self.deps.store.get_order_row(request.order_id)
        gateway = await self._gateway(Exchange(order["exchange"]), order["account"])
        try:
            report = await gateway.find_order(order["symbol"], order["client_order_id"])
        except ExchangeCallError as exc:
            raise read_failure(exc) from None
        if report is not None and report.filled_quantity > 0:
            return await self._record(gateway, order, report)
        return await self._fail_open(order, "open order never confirmed")

    async def _fail_open(self, order: dict[str, Any], message: str, refusal: Refusal | None = None) -> OrderOutcome:
        """End the position as failed (its budget is released by the status change); a PERMANENT
        refusal is recorded on the order, final, in the same transaction."""
        async with self.deps.engine.begin() as conn:
            if refusal is not None:
                await db.record_order_error(conn, order["id"], ErrorClass.PERMANENT, refusal.code, message, final=True)
            await db.fail_open(conn, order["position_id"], message, actor=_actor())
        return OrderOutcome(
            order_id=order["id"],
            client_order_id=order["client_order_id"],
            status=OrderStatus.REJECTED,
            filled_quantity=Decimal(0),
            error_class=ErrorClass.PERMANENT if refusal is not None else None,
            error_code=refusal.code if refusal is not None else None,
            error_message=message[:500],
            position_status=PositionStatus.FAILED,
        )

    async def _record(
        self,
        gateway: Gateway,
        order: dict[str, Any],
        report: OrderReport,
        exit_reason: str | None = None,
        trace: Trace | None = None,
    ) -> OrderOutcome:
        async with self.deps.engine.begin() as conn:
            return await self._record_on(conn, order, report, exit_reason, trace)

    async def _record_on(
        self,
        conn: AsyncConnection,
        order: dict[str, Any],
        report: OrderReport,
        exit_reason: str | None,
        trace: Trace | None = None,
    ) -> OrderOutcome:
        outcome, position = await db.record_fill_returning(
            conn,
            order["id"],
            db.FillReport(report.exchange_order_id, report.filled_quantity, report.average_price),
            actor=_actor(),
            exit_reason=exit_reason,
        )
        if trace is not None:
            trace.position = position
        return outcome

    async def _submit(
        self,
        gateway: Gateway,
        order: dict[str, Any],
        position: dict[str, Any],
        exit_reason: str | None = None,
        trace: Trace | None = None,
        *,
        counted: bool = False,
    ) -> OrderOutcome | Refusal:
        """Send (or find) the order and record its fill. Returns the outcome, or the Refusal
        for a PERMANENT one (the exchange's, or ours before sending). Raises a retryable
        ApplicationError for TRANSIENT trouble. `counted`: the write that created the order just
        counted this first send, after `_may_send`'s checks: it goes out now."""
        intent = Intent(order["intent"])
        exchange = Exchange(order["exchange"])
        if counted:
            return await self._send(gateway, order, position, exit_reason, trace)
        if order["status"] in (OrderStatus.FILLED.value, OrderStatus.PARTIALLY_FILLED.value):
            return _outcome_from_rows(order, position)
        if order["submissions"] > 0:  # it may have reached the exchange before: never resend blind
            found = await self._look_up(gateway, order)
            step = submission.next_step(
                exchange, order["submissions"], _error_class(order), _found(found), _since_last_send(order)
            )
            if step is Step.RECORD:
                assert found is not None
                return await self._record(gateway, order, found, exit_reason, trace)
            if step is Step.WAIT:
                raise not_yet(f"order {order['client_order_id']} may still be on the exchange: looking again")
            if step is Step.REFUSED:
                assert found is not None
                return Refusal("ended_unfilled", f"the exchange ended order {order['client_order_id']} unfilled")
        try:  # checked before the send is counted: a local refusal sends nothing
            await _check_before_send(gateway, order["symbol"], order["quantity"], reduce_only=order["reduce_only"])
        except ExchangeCallError as exc:
            raise read_failure(exc) from None
        except EgisError as exc:
            metrics.ORDERS_SUBMITTED.labels(intent.value, exchange.value, "invalid").inc()
            return Refusal(exc.code, f"refused before sending: {exc.message}")
        await self.deps.store.note_submission(order["id"])
        order["submissions"] += 1
        return await self._send(gateway, order, position, exit_reason, trace)

    async def _send(
        self,
        gateway: Gateway,
        order: dict[str, Any],
        position: dict[str, Any],
        exit_reason: str | None,
        trace: Trace | None,
    ) -> OrderOutcome | Refusal:
        """One counted send of the order, then its answer recorded (or classified)."""
        intent, exchange = Intent(order["intent"]), Exchange(order["exchange"])
        request = OrderRequest(
            intent=intent,
            symbol=order["symbol"],
            side=OrderSide(order["side"]),
            quantity=order["quantity"],
            reduce_only=order["reduce_only"],
            client_order_id=order["client_order_id"],
            position_id=position["id"],
        )
        try:
            report = await gateway.create_order(
                request, record=lambda conn, rep: self._record_on(conn, order, rep, exit_reason, trace)
            )
        except ExchangeCallError as exc:
            return await self._after_error(gateway, order, exc, exit_reason, trace)
        metrics.ORDERS_SUBMITTED.labels(intent.value, exchange.value, report.status).inc()
        faults.hit(f"after_{intent.value}_submit")
        if gateway.records_fills_atomically:
            after = await self.deps.store.get_position(position["id"])
            if trace is not None:
                trace.position = after
            return _outcome_from_rows(await self.deps.store.get_order_row(order["id"]), after)
        if submission.after_send(report.filled_quantity > 0) is Step.WAIT:
            # accepted with nothing filled yet (Binance NEW / 0): never a final zero fill
            if report.exchange_order_id:
                await self.deps.store.note_exchange_order_id(order["id"], report.exchange_order_id)
            raise not_yet(f"order {order['client_order_id']} accepted, nothing filled yet: looking it up")
        return await self._record(gateway, order, report, exit_reason, trace)

    async def _look_up(self, gateway: Gateway, order: dict[str, Any]) -> OrderReport | None:
        try:
            return await gateway.find_order(order["symbol"], order["client_order_id"])
        except ExchangeCallError as exc:
            raise read_failure(exc) from None

    async def _after_error(
        self,
        gateway: Gateway,
        order: dict[str, Any],
        exc: ExchangeCallError,
        exit_reason: str | None,
        trace: Trace | None = None,
    ) -> OrderOutcome | Refusal:
        intent = Intent(order["intent"])
        verdict = exc.classify()
        metrics.ORDERS_SUBMITTED.labels(intent.value, exc.exchange.value, verdict.outcome.value).inc()
        log.warning("%s order %s: %s -> %s (%s)", intent, order["client_order_id"], exc, verdict.outcome, verdict.rule)
        if verdict.outcome is ErrorClass.PERMANENT:  # the caller records it, final, with its consequence
            return Refusal.of(exc, verdict.reason)
        async with self.deps.engine.begin() as conn:
            await db.record_order_error(conn, order["id"], verdict.outcome, exc.code, str(exc), final=False)
        if verdict.outcome is ErrorClass.TRANSIENT:
            raise transient(exc, verdict.reason)
        # VERIFY: did the order execute after all?
        found = await self._look_up(gateway, order)
        if found is not None and found.filled_quantity > 0:
            return await self._record(gateway, order, found, exit_reason, trace)
        if verdict.rule in _MAY_EXIST_RULES:
            # the venue may hold it (a timeout, a 5xx, a duplicate id) and its look-up may lag:
            # "not found" is not absence yet; the next attempt looks again (egis.rules.submission)
            raise not_yet(f"{verdict.reason}; order {order['client_order_id']} not found yet", seconds=2.0)
        raise VerifyNeeded(exc, verdict.reason)

    # ------------------------------------------------------------ the verified close (seed 003)
    @activity.defn(name="close_position")
    async def close_position(self, request: CloseInput) -> CloseResult:
        async with heartbeating():
            return await self._close(request)

    async def _close(self, request: CloseInput) -> CloseResult:
        """Seed 003's plan: settle a close order already sent, read the exchange, decide
        (egis.rules.close), write, send, classify the answer. `orders_sent` counts every request
        this close attempt sent, across activity retries (a 170131 before a ghost counts)."""
        position, unsettled = await self.deps.store.close_snapshot(request.position_id)
        if db.is_final(position["status"]):
            return await self._already_final(request)
        exchange = Exchange(position["exchange"])
        metrics.CLOSE_ATTEMPTS.labels(exchange.value).inc()
        gateway = await self._gateway(exchange, position["account"])
        sent_before = sum(o["submissions"] for o in unsettled if o["attempt"] == request.attempt)

        # 1. settle: a close order we already sent (a crash, a lost answer) is looked up first
        if unsettled:
            resumed = await self._resume_sent_close(gateway, position, unsettled, request)
            if resumed is not None:
                return resumed

        # 2. verify: read the position on the exchange before sending anything
        try:
            on_exchange = await gateway.fetch_position(position["symbol"], Side(position["side"]))
            verified = True
        except ExchangeCallError as exc:
            if exc.classify("read").outcome is not ErrorClass.TRANSIENT or exc.retry_after:
                # throttled or banned: nothing may go out until it ends; the close waits it out
                raise read_failure(exc) from None
            log.warning(
                "position %s: could not read it on %s (%s); closing the DB quantity", position["id"], exchange, exc
            )
            on_exchange, verified = None, False
        rules = await gateway.market(position["symbol"])
        decision = decide_close(
            position["quantity"] - position["closed_quantity"],
            on_exchange.quantity if on_exchange is not None else None,
            verified=verified,
            step=rules.amount_step,
        )
        _count(decision, exchange, position)
        if decision.step is CloseStep.GHOST:
            result = await self._close_ghost(gateway, position, CloseOutcomeKind.GHOST, decision.why)
            return result.model_copy(update={"orders_sent": sent_before})

        # 3. adjust (if the exchange holds another quantity) and write the reduce-only CLOSE order
        #    (its first send counted in the same transaction when nothing stands in its way)
        sending = await self._may_send(gateway, position["symbol"], decision.quantity, reduce_only=True)
        async with self.deps.engine.begin() as conn:
            written = await db.begin_close_returning(
                conn,
                position["id"],
                request.attempt,
                decision.quantity,
                actor=_actor(),
                reason=request.reason,
                adjust_to=decision.quantity if decision.step is CloseStep.ADJUST_THEN_CLOSE else None,
                adjust_reason=decision.why,
                sending=sending,
            )
        position, order = written.position, written.order

        # 4. send (idempotent per attempt), 5. classify the answer
        trace = Trace(position)
        try:
            submitted = await self._submit(
                gateway, order, position, exit_reason=request.reason, trace=trace, counted=written.counted
            )
        except VerifyNeeded as ambiguous:
            result = await self._verify_close(gateway, order, ambiguous)
            return result.model_copy(update={"orders_sent": order["submissions"]})
        if isinstance(submitted, Refusal):
            result = await self._close_refused(order, submitted)
            return result.model_copy(update={"orders_sent": order["submissions"]})
        after = trace.position
        outcome = CloseOutcomeKind.CLOSED if after["status"] == "closed" else None
        return _result_from_row(after, outcome, order["submissions"])

    async def _already_final(self, request: CloseInput) -> CloseResult:
        position, sent = await self.deps.store.close_outcome(request.position_id, request.attempt)
        return _result_from_row(position, CloseOutcomeKind.ALREADY_FINAL, orders_sent=sent)

    async def _resume_sent_close(
        self, gateway: Gateway, position: dict[str, Any], unsettled: list[dict[str, Any]], request: CloseInput
    ) -> CloseResult | None:
        """If a close order of this position was sent but never recorded, record what the
        exchange says about it. Without this, a retry after a crash would find the position
        gone (our own close filled it) and misread it as a ghost."""
        recorded = False
        for order in unsettled:
            found = await self._look_up(gateway, order)
            step = submission.next_step(
                Exchange(order["exchange"]),
                order["submissions"],
                _error_class(order),
                _found(found),
                _since_last_send(order),
            )
            if step is Step.WAIT:  # it may be on the exchange yet: deciding "ghost" now could be wrong
                raise not_yet(f"close order {order['client_order_id']} may still be on the exchange: looking again")
            if step is Step.RECORD and found is not None:
                log.info(
                    "position %s: close order %s was filled before a restart; recording it",
                    position["id"],
                    order["client_order_id"],
                )
                await self._record(gateway, order, found, request.reason)
                recorded = True
        if not recorded:
            return None
        after, sent = await self.deps.store.close_outcome(position["id"], request.attempt)
        if db.is_final(after["status"]):
            resumed = sum(o["submissions"] for o in unsettled if o["attempt"] != request.attempt)
            return _result_from_row(after, CloseOutcomeKind.CLOSED, orders_sent=sent + resumed)
        return None

    async def _verify_close(self, gateway: Gateway, order: dict[str, Any], ambiguous: VerifyNeeded) -> CloseResult:
        """An ambiguous answer to a close (170131, -2022, a timeout...): read the exchange again."""
        position = await self.deps.store.get_position(order["position_id"])
        try:
            on_exchange = await gateway.fetch_position(position["symbol"], Side(position["side"]))
        except ExchangeCallError as exc:
            raise read_failure(exc) from None
        if on_exchange is None:
            metrics.CLOSE_POSITION_NOT_FOUND.labels(position["exchange"]).inc()
            log.warning(
                "position %s: %s answered %s, and the position is gone: POSITION_NOT_FOUND, not retried",
                position["id"],
                position["exchange"],
                ambiguous.error,
            )
            async with self.deps.engine.begin() as conn:
                await db.record_order_error(
                    conn, order["id"], ErrorClass.VERIFY, ambiguous.error.code, str(ambiguous.error), final=True
                )
            return await self._close_ghost(
                gateway, position, CloseOutcomeKind.POSITION_NOT_FOUND, f"verified after {ambiguous.error}"
            )
        if ambiguous.error.classify().rule in _TIMEOUT_RULES:
            raise transient(ambiguous.error, "the order was not found and the position is still open: resend")
        refusal = Refusal.of(ambiguous.error, f"{ambiguous.reason}, but the position is still open")
        return await self._close_refused(order, refusal)

    async def _close_refused(self, order: dict[str, Any], refusal: Refusal) -> CloseResult:
        """PERMANENT: stop, keep the position open with the error, wait for an operator."""
        async with self.deps.engine.begin() as conn:
            await db.record_order_error(
                conn, order["id"], ErrorClass.PERMANENT, refusal.code, refusal.message, final=True
            )
            row = await db.reopen_after_failed_close(conn, order["position_id"], refusal.message, actor=_actor())
        result = _result_from_row(row, CloseOutcomeKind.FAILED, orders_sent=0)
        return result.model_copy(
            update={
                "error_class": ErrorClass.PERMANENT,
                "error_code": refusal.code,
                "error_message": refusal.message[:500],
            }
        )

    @activity.defn(name="close_failed")
    async def close_failed(self, request: CloseFailedInput) -> CloseResult:
        """The close activity itself failed for good (a non-retryable error, retries exhausted):
        the position goes back to open with the error, as for a refused order, so the database
        never says `closing` about a position nobody is closing."""
        async with self.deps.engine.begin() as conn:
            await db.mark_unsent_orders(conn, request.position_id, Intent.CLOSE, request.error)
            row = await db.reopen_after_failed_close(conn, request.position_id, request.error, actor=_actor())
        if db.is_final(row["status"]):  # closed meanwhile (a maintenance job, the sync): nothing failed
            return _result_from_row(row, CloseOutcomeKind.ALREADY_FINAL, orders_sent=0)
        result = _result_from_row(row, CloseOutcomeKind.FAILED, orders_sent=0)
        return result.model_copy(update={"error_message": request.error[:500]})

    async def _close_ghost(
        self, gateway: Gateway, position: dict[str, Any], outcome: CloseOutcomeKind, why: str
    ) -> CloseResult:
        """Closed on the exchange: learn exit price and PnL from its trade history (NULL if not found)."""
        since = position["opened_at"] or position["created_at"]
        side = Side(position["side"])
        open_quantity = position["quantity"] - position["closed_quantity"]
        try:
            trades = await gateway.fetch_closing_trades(position["symbol"], side, since, open_quantity)
        except ExchangeCallError as exc:
            if exc.retry_after:  # throttled or banned: wait it out rather than lose the exit for good
                raise transient(exc, "trade history throttled") from None
            log.warning(
                "position %s: trade history unavailable (%s); exit price and PnL stay unknown", position["id"], exc
            )
            trades = []
        exit_ = exit_from_trades(
            side,
            position["entry_price"],
            open_quantity,
            [ClosingTrade(t.price, t.quantity, t.realized_pnl, t.kind) for t in trades],
        )
        async with self.deps.engine.begin() as conn:
            row = await db.close_without_order(
                conn,
                position["id"],
                exit_reason=exit_.reason,
                exit_price=exit_.price,
                realized_pnl=exit_.realized_pnl,
                actor=_actor(),
                why=why,
            )
        return _result_from_row(row, outcome, orders_sent=0)

    # ------------------------------------------------------------ sync hints
    @activity.defn(name="observe_position")
    async def observe_position(self, request: ObserveInput) -> ObserveResult:
        """The sync job says the exchange disagrees: re-read it and record what is true. Never sends orders."""
        position = await self.deps.store.get_position(request.position_id)
        if db.is_final(position["status"]) or position["status"] == PositionStatus.OPENING.value:
            return ObserveResult(status=PositionStatus(position["status"]), changed="none")
        gateway = await self._gateway(Exchange(position["exchange"]), position["account"])
        try:
            on_exchange = await gateway.fetch_position(position["symbol"], Side(position["side"]))
        except ExchangeCallError as exc:
            raise read_failure(exc) from None
        if on_exchange is None:
            metrics.GHOST_POSITIONS.labels(position["exchange"]).inc()
            result = await self._close_ghost(
                gateway, position, CloseOutcomeKind.GHOST, "exchange sync: not on the exchange"
            )
            return ObserveResult(status=result.status, changed="closed_on_exchange")
        open_quantity = position["quantity"] - position["closed_quantity"]
        rules = await gateway.market(position["symbol"])
        if quantities_differ(open_quantity, on_exchange.quantity, rules.amount_step):
            async with self.deps.engine.begin() as conn:
                await db.adjust_open_quantity(
                    conn,
                    position["id"],
                    on_exchange.quantity,
                    actor=_actor(),
                    reason=f"exchange sync: exchange holds {on_exchange.quantity}, we held {open_quantity}",
                )
            return ObserveResult(status=PositionStatus(position["status"]), changed="quantity_adjusted")
        return ObserveResult(status=PositionStatus(position["status"]), changed="none")


_MAY_EXIST_RULES = frozenset(
    {
        "binance-unknown-status",
        "timeout-after-send",
        "unavailable-after-send",
        "operation-failed-after-send",
        "bybit-10016-after-send",
        "binance-4116-duplicate",
        "bybit-110072-duplicate",
    }
)
"""VERIFY rules after which the order may exist on the venue (not a refusal in disguise)."""


async def _check_before_send(gateway: Gateway, symbol: str, quantity: Decimal, *, reduce_only: bool) -> None:
    """What must hold before a send is counted: the market takes the quantity (EgisError), and the
    account is not backing off (throttled or banned: nothing goes out; ExchangeCallError)."""
    validate_quantity(quantity, await gateway.market(symbol), reduce_only=reduce_only)
    await gateway.check_backoff()


def _hedge_message(exchange: Exchange, account: str) -> str:
    how = (
        "Binance: Preferences > Position Mode > One-way Mode, or POST /fapi/v1/positionSide/dual dualSidePosition=false"
        if exchange is Exchange.BINANCEUSDM
        else "Bybit: POST /v5/position/switch-mode category=linear coin=USDT mode=0 (or the position mode "
        "setting in the web UI)"
    )
    return (
        f"{exchange.value}/{account} is in hedge mode; Egis keeps one net position per symbol and opens "
        f"only on one-way accounts: switch it to one-way mode ({how}) with no position open, then retry"
    )


def _error_class(order: dict[str, Any]) -> ErrorClass | None:
    return ErrorClass(order["error_class"]) if order["error_class"] else None


def _found(report: OrderReport | None) -> submission.Found | None:
    return None if report is None else submission.Found(report.status, report.filled_quantity > 0)


def _since_last_send(order: dict[str, Any]) -> timedelta | None:
    sent = order.get("submitted_at") or order.get("updated_at")
    return None if sent is None else datetime.now(UTC) - sent


_TIMEOUT_RULES = frozenset(
    {
        "binance-unknown-status",
        "timeout-after-send",
        "unavailable-after-send",
        "operation-failed-after-send",
        "bybit-10016-after-send",
    }
)
"""VERIFY rules about an unknown execution status (not a disguised 'position gone')."""


@dataclass
class Trace:
    """What one submission wrote last: the position row the fill left (no second read)."""

    position: dict[str, Any]


def _count(decision: CloseDecision, exchange: Exchange, position: dict[str, Any]) -> None:
    """Seed 003's metrics and log lines, per decision."""
    label = exchange.value
    if decision.step is CloseStep.GHOST:
        metrics.GHOST_POSITIONS.labels(label).inc()
        log.warning(
            "position %s %s: not on the exchange; ghost, closed without an order", position["id"], position["symbol"]
        )
    elif decision.step is CloseStep.ADJUST_THEN_CLOSE:
        metrics.CLOSE_QUANTITY_MISMATCHES.labels(label).inc()
        log.warning("position %s: quantity mismatch, %s; closing the exchange's quantity", position["id"], decision.why)
    elif decision.step is CloseStep.CLOSE_UNVERIFIED:
        metrics.CLOSE_VALIDATION_FAILURES.labels(label).inc()


@dataclass(frozen=True)
class Refusal:
    """A PERMANENT refusal of an order: the exchange's (classified), or ours before sending."""

    code: str | None
    message: str

    @classmethod
    def of(cls, exc: ExchangeCallError, reason: str) -> Refusal:
        return cls(exc.code, f"{reason}: {exc}")


class VerifyNeeded(Exception):
    """An ambiguous answer, and the order was not found: the caller must read the exchange."""

    def __init__(self, error: ExchangeCallError, reason: str) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason


def _outcome_from_rows(order: dict[str, Any], position: dict[str, Any]) -> OrderOutcome:
    return OrderOutcome(
        order_id=order["id"],
        client_order_id=order["client_order_id"],
        status=OrderStatus(order["status"]),
        filled_quantity=order["filled_quantity"],
        average_price=order["average_price"],
        error_class=ErrorClass(order["error_class"]) if order["error_class"] else None,
        error_code=order["error_code"],
        error_message=order["error_message"],
        position_status=PositionStatus(position["status"]),
    )


def _result_from_row(row: dict[str, Any], outcome: CloseOutcomeKind | None, orders_sent: int) -> CloseResult:
    status = PositionStatus(row["status"])
    if outcome is None:  # a partial close: the workflow tries again
        outcome = CloseOutcomeKind.CLOSED if status is PositionStatus.CLOSED else CloseOutcomeKind.FAILED
    return CloseResult(
        position_id=row["id"],
        outcome=outcome,
        status=status,
        exit_reason=row["exit_reason"],
        exit_price=row["exit_price"],
        realized_pnl=row["realized_pnl"],
        orders_sent=orders_sent,
        closed_quantity=row["closed_quantity"],
        error_message=row["last_error"],
    )
