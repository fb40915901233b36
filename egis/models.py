"""Shared vocabulary: enums, validated inputs, workflow/activity payloads, names.

This module is imported by workflow code, so it must stay light: pydantic, the standard
library and `temporalio.common` only (never sqlalchemy or ccxt). Every payload that crosses
Temporal is one of these models; inputs validate themselves, so a malformed request fails
with a clear message before anything is written.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from temporalio.common import SearchAttributeKey


class Exchange(StrEnum):
    BINANCEUSDM = "binanceusdm"
    BYBIT = "bybit"
    PAPER = "paper"


class Side(StrEnum):
    LONG = "long"
    SHORT = "short"

    @property
    def opposite(self) -> Side:
        return Side.SHORT if self is Side.LONG else Side.LONG


class OrderSide(StrEnum):
    BUY = "buy"
    SELL = "sell"


class Intent(StrEnum):
    OPEN = "open"
    CLOSE = "close"


class PositionStatus(StrEnum):
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"


FINAL_STATUSES = frozenset({PositionStatus.CLOSED, PositionStatus.FAILED})
RESERVING_STATUSES = frozenset({PositionStatus.OPENING, PositionStatus.OPEN, PositionStatus.CLOSING})
"""Statuses whose size_usd counts against the bot's budget (seed 000 §7: budget follows status)."""


class OrderStatus(StrEnum):
    PENDING = "pending"  # row written, not yet known to have reached the exchange
    FILLED = "filled"
    PARTIALLY_FILLED = "partially_filled"
    REJECTED = "rejected"  # the exchange (or a permanent error) refused it
    NOT_SENT = "not_sent"  # never sent: e.g. the close found a ghost


class ErrorClass(StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    VERIFY = "verify"


def fixed(value: Decimal) -> Decimal:
    """The same number without an exponent: a division can yield Decimal('6E+4'), which prints
    as "6E+4" in tables, JSON and the web UI; money and quantities always print as 60000."""
    return Decimal(format(value, "f")) if value.is_finite() else value


def order_side_for(intent: Intent, position_side: Side) -> OrderSide:
    """Open a long = buy; close a long = sell. The mapping is the whole of seed 000's ambiguity."""
    opens_long = (intent is Intent.OPEN) == (position_side is Side.LONG)
    return OrderSide.BUY if opens_long else OrderSide.SELL


# ---------------------------------------------------------------- identifier validation
# Every string that crosses a boundary (CLI, client, signal, update, workflow input) has a
# documented maximum length (README, "Input bounds"); the patterns below enforce it.
MAX_BOT_NAME = 40
MAX_ACCOUNT = 40
MAX_REF = 64
MAX_SYMBOL = 24
MAX_REASON = 64
BOT_NAME_RE = re.compile(rf"^[a-z0-9][a-z0-9_-]{{0,{MAX_BOT_NAME - 1}}}$")
ACCOUNT_RE = re.compile(rf"^[a-z0-9][a-z0-9_-]{{0,{MAX_ACCOUNT - 1}}}$")
REF_RE = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_REF - 1}}}$")
SYMBOL_RE = re.compile(rf"^[A-Z0-9]{{1,{MAX_SYMBOL - 4}}}(USDT|USDC)$")
REASON_RE = re.compile(rf"^[a-z0-9][a-z0-9_ .:-]{{0,{MAX_REASON - 1}}}$")

MAX_USD = Decimal("1000000000")  # a billion dollars: anything above is a typo, not a trade
MAX_QUANTITY = Decimal("1000000000000")
EXCERPT = 40
"""At most this many characters of a refused value are repeated in an error or a log line."""


def excerpt(value: object, limit: int = EXCERPT) -> str:
    """A short, safe rendering of a value someone sent us: never the whole of an oversize input."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(text) if isinstance(value, str) else text
    shown = text[:limit]
    return f"{shown!r}… ({len(text)} characters)" if isinstance(value, str) else f"{shown}… ({len(text)} characters)"


def _matches(pattern: re.Pattern[str], what: str, example: str, max_length: int) -> AfterValidator:
    def check(value: str) -> str:
        if len(value) > max_length:
            raise ValueError(f"{what} too long: {len(value)} characters, at most {max_length}")
        if not pattern.fullmatch(value):
            raise ValueError(f"invalid {what} {excerpt(value)}: expected something like {example!r}")
        return value

    return AfterValidator(check)


BotName = Annotated[str, _matches(BOT_NAME_RE, "bot name", "alpha-1 (lowercase, digits, - or _)", MAX_BOT_NAME)]
AccountRef = Annotated[str, _matches(ACCOUNT_RE, "account reference", "binance-main", MAX_ACCOUNT)]
PositionRef = Annotated[str, _matches(REF_RE, "position reference", "sig-20261122-001", MAX_REF)]
Symbol = Annotated[str, _matches(SYMBOL_RE, "symbol", "BTCUSDT", MAX_SYMBOL)]
Reason = Annotated[str, _matches(REASON_RE, "reason", "manual (lowercase words)", MAX_REASON)]


def _finite_positive(value: Decimal, limit: Decimal, what: str) -> Decimal:
    if not value.is_finite():
        raise ValueError(f"{what} must be a finite number, got {value}")
    if value <= 0:
        raise ValueError(f"{what} must be positive, got {value}")
    if value > limit:
        raise ValueError(f"{what} {value} is absurdly large (limit {limit})")
    return value


def _usd(value: Decimal) -> Decimal:
    _finite_positive(value, MAX_USD, "amount in USD")
    if value.as_tuple().exponent < -2:  # type: ignore[operator]
        raise ValueError(f"amount in USD {value} has more than 2 decimal places")
    return value.quantize(Decimal("0.01"))


def _budget(value: Decimal) -> Decimal:
    """A bot budget may be zero (the bot can't open anything), never negative."""
    return Decimal("0.00") if value == 0 and value.is_finite() else _usd(value)


def _quantity(value: Decimal) -> Decimal:
    return _finite_positive(value, MAX_QUANTITY, "quantity")


UsdAmount = Annotated[Decimal, AfterValidator(_usd)]
Quantity = Annotated[Decimal, AfterValidator(_quantity)]


class Strict(BaseModel):
    """Inputs refuse unknown fields and coerce nothing surprising."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- bots
class AgedPolicy(Strict):
    """Seed 003's aged-position policy. Ages are seconds since the position opened.

    - age < max_age_s: no aged exit.
    - grace (max_age_s .. max_age_s + grace_s): close when the price reaches breakeven.
    - progressive (.. expire_s): the accepted loss grows by loss_step_pct per started hour,
      capped at max_loss_pct; close when the price reaches that target.
    - expired (age >= expire_s): close at market.
    """

    max_age_s: int = Field(gt=0, le=365 * 24 * 3600)
    grace_s: int = Field(ge=0, le=365 * 24 * 3600)
    loss_step_pct: Decimal = Field(ge=0, le=100)
    max_loss_pct: Decimal = Field(ge=0, le=100)
    expire_s: int = Field(gt=0, le=3 * 365 * 24 * 3600)

    @field_validator("expire_s")
    @classmethod
    def _expire_after_grace(cls, v: int, info) -> int:  # type: ignore[no-untyped-def]
        data = info.data
        if "max_age_s" in data and "grace_s" in data and v < data["max_age_s"] + data["grace_s"]:
            raise ValueError("expire_s must be at least max_age_s + grace_s")
        return v


class BotSpec(Strict):
    name: BotName
    exchange: Exchange
    account: AccountRef
    budget_usd: Annotated[Decimal, AfterValidator(_budget)]
    aged: AgedPolicy | None = None


class BotView(BaseModel):
    name: str
    exchange: Exchange
    account: str
    budget_usd: Decimal
    aged: AgedPolicy | None = None


class BudgetView(BaseModel):
    bot: str
    budget_usd: Decimal
    reserved_usd: Decimal
    available_usd: Decimal
    reserving_positions: int


# ---------------------------------------------------------------- position workflow payloads
class OpenPositionInput(Strict):
    """What a bot asks for. Exchange, account and policy come from the bot's row, never from here."""

    bot: BotName
    symbol: Symbol
    side: Side
    usd: UsdAmount
    ref: PositionRef


class CloseRequest(Strict):
    reason: Reason = "manual"


class SyncHint(Strict):
    """Sent by the exchange-sync job: the exchange disagrees with the DB about this position."""

    kind: Annotated[str, AfterValidator(lambda v: _one_of(v, {"ghost", "quantity_drift"}))]
    observed_quantity: Decimal | None = None


class ExternalClose(Strict):
    """Sent by a maintenance job that closed the position's row itself (phantom cleanup, reconcile)."""

    reason: Reason


def _one_of(value: str, allowed: set[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{value!r} is not one of {sorted(allowed)}")
    return value


class BotContext(BaseModel):
    """What the workflow learns about its bot from the database (resolve activity)."""

    bot: str
    exchange: Exchange
    account: str
    aged: AgedPolicy | None = None


class PlanOpenInput(BaseModel):
    exchange: Exchange
    account: str
    symbol: str
    usd: Decimal


class OpenPlan(BaseModel):
    quantity: Decimal
    price: Decimal
    amount_step: Decimal


class ReserveInput(BaseModel):
    workflow_id: str
    bot: str
    symbol: str
    side: Side
    usd: Decimal
    quantity: Decimal
    exchange: Exchange
    account: str


class ReservedPosition(BaseModel):
    """The rows written by a reservation: the position (status opening) and its OPEN order."""

    position_id: int
    uid: str
    order_id: int
    client_order_id: str


class PlaceOrderInput(BaseModel):
    order_id: int


class OpenInput(BaseModel):
    """The whole open in one activity (`open_position`): plan, reserve, send, record."""

    workflow_id: str
    bot: str
    symbol: str
    side: Side
    usd: Decimal
    exchange: Exchange
    account: str


class OrderOutcome(BaseModel):
    order_id: int
    client_order_id: str
    status: OrderStatus
    filled_quantity: Decimal
    average_price: Decimal | None = None
    error_class: ErrorClass | None = None
    error_code: str | None = None
    error_message: str | None = None
    position_status: PositionStatus
    position_id: int | None = None  # set by open_position (the workflow learns its row from it)


class CloseInput(BaseModel):
    position_id: int
    reason: str
    attempt: int = Field(ge=1)


class CloseFailedInput(BaseModel):
    """The close activity failed for good; the workflow hands its error to `close_failed`."""

    position_id: int
    error: str = Field(min_length=1, max_length=2000)


class CloseOutcomeKind(StrEnum):
    CLOSED = "closed"  # our reduce-only close order filled
    GHOST = "ghost"  # not on the exchange before we sent anything: closed_on_exchange, no order
    POSITION_NOT_FOUND = "position_not_found"  # an ambiguous rejection, verified: it was gone
    ALREADY_FINAL = "already_final"  # someone else (a maintenance job) closed it first
    FAILED = "failed"  # a PERMANENT error: the position stays open, waiting for an operator


class CloseResult(BaseModel):
    position_id: int | None
    outcome: CloseOutcomeKind
    status: PositionStatus
    exit_reason: str | None = None
    exit_price: Decimal | None = None
    realized_pnl: Decimal | None = None
    orders_sent: int = 0
    closed_quantity: Decimal | None = None
    error_class: ErrorClass | None = None
    error_code: str | None = None
    error_message: str | None = None


class ObserveInput(BaseModel):
    position_id: int
    hint: SyncHint


class ObserveResult(BaseModel):
    status: PositionStatus
    changed: str  # "closed_on_exchange", "quantity_adjusted", "none"


class PositionView(BaseModel):
    """The `state` query: what the workflow believes, for the UI and the CLI."""

    workflow_id: str
    bot: str
    symbol: str
    side: Side
    status: str
    exchange: Exchange | None = None
    position_id: int | None = None
    quantity: Decimal | None = None
    entry_price: Decimal | None = None
    exit_price: Decimal | None = None
    realized_pnl: Decimal | None = None
    exit_reason: str | None = None
    opened_at: datetime | None = None
    aged_phase: str | None = None
    close_attempts: int = 0
    last_error: str | None = None


class PositionResult(BaseModel):
    """What a finished PositionWorkflow returns."""

    workflow_id: str
    position_id: int | None
    status: str
    exit_reason: str | None = None
    exit_price: Decimal | None = None
    realized_pnl: Decimal | None = None
    error: str | None = None


class PositionWorkflowInput(BaseModel):
    """Carried across continue-as-new: the request plus what the run has learnt so far."""

    request: OpenPositionInput
    bot_context: BotContext | None = None  # read by the client at start: the workflow then skips resolve_bot
    context: BotContext | None = None
    position_id: int | None = None
    quantity: Decimal | None = None
    entry_price: Decimal | None = None
    opened_at: datetime | None = None
    status: str = PositionStatus.OPENING
    close_attempts: int = 0
    pending_close: CloseRequest | None = None
    pending_hint: SyncHint | None = None
    pending_external: ExternalClose | None = None
    last_error: str | None = None


# ---------------------------------------------------------------- price watching
class WatcherInput(BaseModel):
    """A price watcher per exchange account (carried across continue-as-new)."""

    exchange: Exchange
    account: str
    tick_seconds: float = 5.0
    idle_ticks: int = 0


class AgedCheckInput(BaseModel):
    exchange: Exchange
    account: str
    now: datetime


class AgedTrigger(BaseModel):
    workflow_id: str
    position_id: int
    phase: str
    price: Decimal | None  # None: expired, close at market
    target: Decimal | None


class AgedCheckResult(BaseModel):
    watched: int
    triggers: list[AgedTrigger]
    tickers_requests: int


class ExitTrigger(Strict):
    """From the price watcher: an aged position reached its phase's target."""

    phase: Literal["grace", "progressive", "expired"]
    price: Decimal | None = None


# ---------------------------------------------------------------- maintenance
class SyncInput(BaseModel):
    exchange: Exchange
    account: str
    actor: str = "schedule"


class SyncReport(BaseModel):
    run_id: int
    exchange: Exchange
    account: str
    found: dict[str, int]
    ghosts: list[dict[str, Any]] = Field(default_factory=list)
    drifts: list[dict[str, Any]] = Field(default_factory=list)
    orphans: list[dict[str, Any]] = Field(default_factory=list)
    told: int = 0
    unmanaged: list[int] = Field(default_factory=list)  # findings whose workflow is not running


class AccountInput(BaseModel):
    exchange: Exchange
    account: str


class HeldPosition(BaseModel):
    symbol: str
    side: Side
    quantity: Decimal


class AccountPositions(BaseModel):
    """One read of an exchange account's open positions, or why it could not be read: the
    evidence a repair needs before it may touch a position the exchange might still hold."""

    exchange: Exchange
    account: str
    positions: list[HeldPosition] = Field(default_factory=list)
    error: str | None = None


class StreamRunReport(BaseModel):
    """What one run of the account stream activity saw (the workflow starts the next run)."""

    exchange: Exchange
    account: str
    disabled: bool = False  # EGIS_STREAMS=0 on the worker that ran it: the workflow ends
    events: int = 0
    reconnects: int = 0
    gap_fill_findings: int = 0
    last_error: str | None = None


class MaintenanceInput(BaseModel):
    """Paper reconciliation (`apply` = --fix) and phantom-short cleanup (`apply` = --confirm)."""

    apply: bool = False
    debug: bool = False
    actor: str = "schedule"
    exchange_reads: list[AccountPositions] = Field(default_factory=list)  # filled in by the workflow


class MaintenanceReport(BaseModel):
    run_id: int
    kind: str
    mode: str
    found: dict[str, int]
    rows: list[dict[str, Any]] = Field(default_factory=list)
    debug: list[str] = Field(default_factory=list)
    repaired: int = 0
    to_tell: list[str] = Field(default_factory=list)  # workflows of positions a repair closed
    told: int = 0


# ---------------------------------------------------------------- health
class HealthReport(BaseModel):
    worker_identity: str
    database: str
    migrations_head: str | None
    checked_at: datetime


# ---------------------------------------------------------------- search attributes and names
SA_BOT_ID = SearchAttributeKey.for_keyword("BotId")
SA_SYMBOL = SearchAttributeKey.for_keyword("Symbol")
SA_EXCHANGE = SearchAttributeKey.for_keyword("Exchange")
SA_POSITION_SIDE = SearchAttributeKey.for_keyword("PositionSide")
SA_POSITION_STATUS = SearchAttributeKey.for_keyword("PositionStatus")
ALL_SEARCH_ATTRIBUTES = [SA_BOT_ID, SA_SYMBOL, SA_EXCHANGE, SA_POSITION_SIDE, SA_POSITION_STATUS]


POSITION_WORKFLOW_RE = re.compile(
    rf"^pos-[a-z0-9][a-z0-9_-]{{0,{MAX_BOT_NAME - 1}}}-[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_REF - 1}}}$"
)
"""What `egis close | show` accept besides a numeric position id (at most 109 characters)."""


def position_workflow_id(bot: str, ref: str) -> str:
    """One workflow per (bot, caller reference): starting the same position twice is refused."""
    return f"pos-{bot}-{ref}"


def account_task_queue(main_queue: str, exchange: Exchange | str, account: str) -> str:
    """Exchange I/O for one account runs on its own queue, so its rate limit holds across workers."""
    return f"{main_queue}-{Exchange(exchange).value}-{account}"


def stream_workflow_id(main_queue: str, exchange: Exchange | str, account: str) -> str:
    """One private stream per (deployment queue, exchange account), however many workers run."""
    return f"stream-{main_queue}-{Exchange(exchange).value}-{account}"


def watcher_workflow_id(main_queue: str, exchange: Exchange | str, account: str) -> str:
    """One price watcher per (deployment queue, exchange account)."""
    return f"watch-{main_queue}-{Exchange(exchange).value}-{account}"


# ---------------------------------------------------------------- the web UI's User Metadata
def plain(value: object, unknown: str = "—") -> str:
    """Money and quantities as plain decimals (60000, never 6E+4)."""
    if isinstance(value, Decimal):
        text = format(value, "f")
        return text if text != "-0" else "0"
    return unknown if value is None else str(value)


def usd(value: Decimal) -> str:
    """Dollars for people: `$100` for a whole amount, `$100.50` otherwise."""
    if value == value.to_integral_value():
        return f"${format(value.to_integral_value(), 'f')}"
    return f"${format(value.quantize(Decimal('0.01')), 'f')}"


def position_summary(request: OpenPositionInput) -> str:
    """The one-line static summary of a position workflow: `alpha: long BTCUSDT $100, ref sig-42`."""
    return f"{request.bot}: {request.side.value} {request.symbol} {usd(request.usd)}, ref {request.ref}"


def position_static_details(request: OpenPositionInput, context: BotContext | None, started_by: str) -> str:
    """The static details (markdown) set at start: what was asked, by whom, where."""
    rows = [
        ("bot", request.bot),
        ("side", request.side.value),
        ("symbol", request.symbol),
        ("size", usd(request.usd)),
        ("reference", request.ref),
    ]
    if context is not None:
        rows += [("exchange", context.exchange.value), ("account", context.account)]
        if context.aged is not None:
            a = context.aged
            rows.append(
                (
                    "aged policy",
                    f"aged after {a.max_age_s} s, grace {a.grace_s} s, +{plain(a.loss_step_pct)} % loss per hour "
                    f"up to {plain(a.max_loss_pct)} %, market close at {a.expire_s} s",
                )
            )
    rows.append(("started by", started_by))
    items = "\n".join(f"- **{k}**: {v}" for k, v in rows)
    return f"**Position {position_summary(request)}**\n\n{items}\n"
