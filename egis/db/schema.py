"""The database schema (SQLAlchemy Core). Alembic migrations create it; a test checks that the
migrated database and this metadata agree.

Constraints here enforce what code must never break, so a bug elsewhere hits a wall:
- a close order references a position and is reduce-only;
- client order ids are unique;
- order quantities are positive; position quantities are never negative (a legacy phantom
  row may hold 0, seed 000 §4);
- at most one non-final position per (bot, symbol, side).
Every price, quantity and amount is NUMERIC (Decimal in Python).
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    Table,
    Text,
    TypeDecorator,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class FixedNumeric(TypeDecorator[Decimal]):
    """NUMERIC read back as a fixed-point Decimal. asyncpg decodes 60000 as Decimal('6E+4'):
    equal, but it would show up as "6E+4" in tables, JSON and the web UI."""

    impl = Numeric
    cache_ok = True

    def process_result_value(self, value: Decimal | None, dialect: object) -> Decimal | None:
        return None if value is None else Decimal(format(value, "f"))


USD = FixedNumeric(20, 2)
"""Budget and position sizes: cents, exactly."""
DEC = FixedNumeric()
"""Prices, quantities, PnL: arbitrary precision."""
TS = DateTime(timezone=True)

EXCHANGES = "'binanceusdm', 'bybit', 'paper'"
NON_FINAL = "('opening', 'open', 'closing')"

bots = Table(
    "bots",
    metadata,
    Column("name", Text, primary_key=True),
    Column("exchange", Text, nullable=False),
    Column("account", Text, nullable=False),  # a reference to credentials, never the secret itself
    Column("budget_usd", USD, nullable=False),
    Column("aged_max_age_s", Integer),  # NULL: no aged-position policy
    Column("aged_grace_s", Integer),
    Column("aged_loss_step_pct", DEC),
    Column("aged_max_loss_pct", DEC),
    Column("aged_expire_s", Integer),
    Column("created_at", TS, nullable=False, server_default=func.now()),
    Column("updated_at", TS, nullable=False, server_default=func.now()),
    CheckConstraint(f"exchange IN ({EXCHANGES})", name="exchange"),
    CheckConstraint("budget_usd >= 0", name="budget_not_negative"),
    CheckConstraint(
        "(aged_max_age_s IS NULL) = (aged_grace_s IS NULL) AND (aged_max_age_s IS NULL) = (aged_expire_s IS NULL)",
        name="aged_all_or_nothing",
    ),
)

positions = Table(
    "positions",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("uid", Text, nullable=False, unique=True),  # random, stable: the root of client order ids
    Column("bot", Text, ForeignKey("bots.name"), nullable=False),
    Column("exchange", Text, nullable=False),
    Column("account", Text, nullable=False),
    Column("symbol", Text, nullable=False),
    Column("side", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("quantity", DEC, nullable=False, server_default=text("0")),  # filled by OPEN orders
    Column("closed_quantity", DEC, nullable=False, server_default=text("0")),  # filled by CLOSE orders
    Column("entry_price", DEC),
    Column("exit_price", DEC),
    Column("size_usd", USD, nullable=False),  # the budget this position holds while non-final
    Column("realized_pnl", DEC),  # NULL = unknown; never a made-up 0
    Column("created_at", TS, nullable=False, server_default=func.now()),
    Column("opened_at", TS),
    Column("closed_at", TS),
    Column("exit_reason", Text),
    Column("workflow_id", Text, unique=True),  # NULL only for rows imported from legacy systems
    Column("last_error", Text),
    Column("updated_at", TS, nullable=False, server_default=func.now()),
    CheckConstraint(f"exchange IN ({EXCHANGES})", name="exchange"),
    CheckConstraint("side IN ('long', 'short')", name="side"),
    CheckConstraint("status IN ('opening', 'open', 'closing', 'closed', 'failed')", name="status"),
    CheckConstraint("quantity >= 0", name="quantity_not_negative"),
    CheckConstraint("closed_quantity >= 0 AND closed_quantity <= quantity", name="closed_within_quantity"),
    CheckConstraint("size_usd >= 0", name="size_not_negative"),
    CheckConstraint("(status IN ('closed', 'failed')) = (closed_at IS NOT NULL)", name="closed_at_iff_final"),
    Index(
        "uq_positions_one_live_per_bot_symbol_side",
        "bot",
        "symbol",
        "side",
        unique=True,
        postgresql_where=text(f"status IN {NON_FINAL}"),
    ),
    Index("ix_positions_bot_status", "bot", "status"),
    Index("ix_positions_account_status", "exchange", "account", "status"),
    # phantom-short detection: open shorts by exchange, and closed longs by (bot, symbol, closed_at)
    Index(
        "ix_positions_open_shorts",
        "exchange",
        "created_at",
        postgresql_where=text("side = 'short' AND status = 'open'"),
    ),
    Index(
        "ix_positions_live_paper",
        "id",
        postgresql_where=text("exchange = 'paper' AND status IN ('open', 'closing')"),
    ),
    Index(
        "ix_positions_closed_longs",
        "bot",
        "symbol",
        "closed_at",
        postgresql_where=text("side = 'long' AND status = 'closed'"),
    ),
)

orders = Table(
    "orders",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("position_id", BigInteger, ForeignKey("positions.id")),
    Column("intent", Text, nullable=False),
    Column("exchange", Text, nullable=False),
    Column("account", Text, nullable=False),
    Column("symbol", Text, nullable=False),
    Column("side", Text, nullable=False),
    Column("type", Text, nullable=False, server_default=text("'market'")),
    Column("quantity", DEC, nullable=False),
    Column("reduce_only", Boolean, nullable=False),
    Column("client_order_id", Text, nullable=False, unique=True),
    Column("exchange_order_id", Text),
    Column("status", Text, nullable=False),
    Column("filled_quantity", DEC, nullable=False, server_default=text("0")),
    Column("average_price", DEC),
    Column("attempt", Integer, nullable=False, server_default=text("1")),
    Column("submissions", Integer, nullable=False, server_default=text("0")),  # sends actually made
    Column("submitted_at", TS),  # the last send (a look-up's "not found" counts only after the venue's lag)
    Column("error_class", Text),
    Column("error_code", Text),
    Column("error_message", Text),
    Column("created_at", TS, nullable=False, server_default=func.now()),
    Column("updated_at", TS, nullable=False, server_default=func.now()),
    CheckConstraint("intent IN ('open', 'close')", name="intent"),
    CheckConstraint("side IN ('buy', 'sell')", name="side"),
    CheckConstraint("type IN ('market', 'limit')", name="type"),
    CheckConstraint(
        "status IN ('pending', 'filled', 'partially_filled', 'rejected', 'not_sent')",
        name="status",
    ),
    CheckConstraint("quantity > 0", name="quantity_positive"),
    CheckConstraint("filled_quantity >= 0 AND filled_quantity <= quantity", name="filled_within_quantity"),
    CheckConstraint("intent <> 'close' OR position_id IS NOT NULL", name="close_references_position"),
    CheckConstraint("intent <> 'close' OR reduce_only", name="close_is_reduce_only"),
    CheckConstraint("error_class IS NULL OR error_class IN ('transient', 'permanent', 'verify')", name="error_class"),
    Index("ix_orders_position_id", "position_id"),
)

paper_balances = Table(
    "paper_balances",
    metadata,
    Column("account", Text, primary_key=True),
    Column("balance", DEC, nullable=False),
    Column("updated_at", TS, nullable=False, server_default=func.now()),
)

paper_positions = Table(
    "paper_positions",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("position_id", BigInteger, ForeignKey("positions.id"), unique=True),  # NULL: legacy/untracked
    Column("account", Text, nullable=False),
    Column("symbol", Text, nullable=False),
    Column("side", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("quantity", DEC, nullable=False),
    Column("entry_price", DEC, nullable=False),
    Column("exit_price", DEC),
    Column("realized_pnl", DEC),
    Column("opened_at", TS, nullable=False, server_default=func.now()),
    Column("closed_at", TS),
    Column("updated_at", TS, nullable=False, server_default=func.now()),
    CheckConstraint("side IN ('long', 'short')", name="side"),
    CheckConstraint("status IN ('open', 'closed')", name="status"),
    CheckConstraint("quantity >= 0", name="quantity_not_negative"),
    Index("ix_paper_positions_account_status", "account", "status"),
    Index("ix_paper_positions_open", "position_id", postgresql_where=text("status = 'open'")),
)

paper_fills = Table(
    "paper_fills",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("account", Text, nullable=False),
    Column("client_order_id", Text, nullable=False, unique=True),
    Column("paper_position_id", BigInteger, ForeignKey("paper_positions.id"), nullable=False),
    Column("symbol", Text, nullable=False),
    Column("side", Text, nullable=False),
    Column("reduce_only", Boolean, nullable=False),
    Column("quantity", DEC, nullable=False),
    Column("price", DEC, nullable=False),
    Column("realized_pnl", DEC),
    Column("created_at", TS, nullable=False, server_default=func.now()),
    CheckConstraint("side IN ('buy', 'sell')", name="side"),
    CheckConstraint("quantity > 0", name="quantity_positive"),
)

maintenance_runs = Table(
    "maintenance_runs",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("kind", Text, nullable=False),  # exchange_sync | reconcile_paper | cleanup_phantom_shorts | selftest
    Column("mode", Text, nullable=False),  # dry_run | fix | confirm | observe; selftest: testnet | local | live
    Column("actor", Text, nullable=False),
    Column("started_at", TS, nullable=False, server_default=func.now()),
    Column("finished_at", TS),
    Column("found", JSONB, nullable=False, server_default=text("'{}'::jsonb")),  # counts by kind
    Column("report", JSONB, nullable=False, server_default=text("'[]'::jsonb")),  # rows found / repaired
    Column("scope", Text),  # what the run covered, e.g. "bybit/bybit-main" for an exchange sync
    Index("ix_maintenance_runs_kind_started", "kind", "started_at"),
    Index("ix_maintenance_runs_kind_scope_started", "kind", "scope", "started_at"),
)

exchange_backoffs = Table(
    "exchange_backoffs",
    metadata,
    Column("exchange", Text, primary_key=True),
    Column("account", Text, primary_key=True),
    Column("until", TS, nullable=False),  # no request to this account before then (Retry-After, a ban)
    Column("reason", Text, nullable=False),
    Column("updated_at", TS, nullable=False, server_default=func.now()),
)
"""One back-off per exchange account, shared by every activity and every worker process."""

stream_status = Table(
    "stream_status",
    metadata,
    Column("exchange", Text, primary_key=True),
    Column("account", Text, primary_key=True),
    Column("connected", Boolean, nullable=False, server_default=text("false")),
    Column("connected_since", TS),
    Column("last_event_at", TS),
    Column("reconnects", Integer, nullable=False, server_default=text("0")),
    Column("events", BigInteger, nullable=False, server_default=text("0")),
    Column("lag_ms", Integer),
    Column("worker", Text),  # the worker identity holding the stream
    Column("last_error", Text),
    Column("reported", JSONB, nullable=False, server_default=text("'[]'::jsonb")),  # position ids it reported
    Column("updated_at", TS, nullable=False, server_default=func.now()),
)
"""One row per exchange account with a private stream (`egis streams`)."""

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("at", TS, nullable=False, server_default=func.now()),
    Column("actor", Text, nullable=False),  # who: a workflow id, a maintenance job, cli:<user>
    Column("action", Text, nullable=False),
    Column("reason", Text, nullable=False),  # why
    Column("entity", Text, nullable=False),  # which table
    Column("entity_id", Text, nullable=False),
    Column("before", JSONB),
    Column("after", JSONB),
    Column("run_id", BigInteger, ForeignKey("maintenance_runs.id")),
    Index("ix_audit_events_entity", "entity", "entity_id"),
)
