"""Initial schema: bots, positions, orders, paper exchange state, audit events, maintenance runs.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

USD = sa.Numeric(20, 2)
DEC = sa.Numeric()
TS = sa.DateTime(timezone=True)
EXCHANGES = "'binanceusdm', 'bybit', 'paper'"


def _now() -> sa.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "bots",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("exchange", sa.Text(), nullable=False),
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("budget_usd", USD, nullable=False),
        sa.Column("aged_max_age_s", sa.Integer()),
        sa.Column("aged_grace_s", sa.Integer()),
        sa.Column("aged_loss_step_pct", DEC),
        sa.Column("aged_max_loss_pct", DEC),
        sa.Column("aged_expire_s", sa.Integer()),
        sa.Column("created_at", TS, nullable=False, server_default=_now()),
        sa.Column("updated_at", TS, nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("name", name="pk_bots"),
        sa.CheckConstraint(f"exchange IN ({EXCHANGES})", name="ck_bots_exchange"),
        sa.CheckConstraint("budget_usd >= 0", name="ck_bots_budget_not_negative"),
        sa.CheckConstraint(
            "(aged_max_age_s IS NULL) = (aged_grace_s IS NULL) AND (aged_max_age_s IS NULL) = (aged_expire_s IS NULL)",
            name="ck_bots_aged_all_or_nothing",
        ),
    )
    op.create_table(
        "positions",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("uid", sa.Text(), nullable=False),
        sa.Column("bot", sa.Text(), nullable=False),
        sa.Column("exchange", sa.Text(), nullable=False),
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("side", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("quantity", DEC, nullable=False, server_default=sa.text("0")),
        sa.Column("closed_quantity", DEC, nullable=False, server_default=sa.text("0")),
        sa.Column("entry_price", DEC),
        sa.Column("exit_price", DEC),
        sa.Column("size_usd", USD, nullable=False),
        sa.Column("realized_pnl", DEC),
        sa.Column("created_at", TS, nullable=False, server_default=_now()),
        sa.Column("opened_at", TS),
        sa.Column("closed_at", TS),
        sa.Column("exit_reason", sa.Text()),
        sa.Column("workflow_id", sa.Text()),
        sa.Column("last_error", sa.Text()),
        sa.Column("updated_at", TS, nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("id", name="pk_positions"),
        sa.ForeignKeyConstraint(["bot"], ["bots.name"], name="fk_positions_bot_bots"),
        sa.UniqueConstraint("uid", name="uq_positions_uid"),
        sa.UniqueConstraint("workflow_id", name="uq_positions_workflow_id"),
        sa.CheckConstraint(f"exchange IN ({EXCHANGES})", name="ck_positions_exchange"),
        sa.CheckConstraint("side IN ('long', 'short')", name="ck_positions_side"),
        sa.CheckConstraint("status IN ('opening', 'open', 'closing', 'closed', 'failed')", name="ck_positions_status"),
        sa.CheckConstraint("quantity >= 0", name="ck_positions_quantity_not_negative"),
        sa.CheckConstraint(
            "closed_quantity >= 0 AND closed_quantity <= quantity", name="ck_positions_closed_within_quantity"
        ),
        sa.CheckConstraint("size_usd >= 0", name="ck_positions_size_not_negative"),
        sa.CheckConstraint(
            "(status IN ('closed', 'failed')) = (closed_at IS NOT NULL)",
            name="ck_positions_closed_at_iff_final",
        ),
    )
    op.create_index(
        "uq_positions_one_live_per_bot_symbol_side",
        "positions",
        ["bot", "symbol", "side"],
        unique=True,
        postgresql_where=sa.text("status IN ('opening', 'open', 'closing')"),
    )
    op.create_index("ix_positions_bot_status", "positions", ["bot", "status"])
    op.create_index("ix_positions_account_status", "positions", ["exchange", "account", "status"])
    op.create_index(
        "ix_positions_open_shorts",
        "positions",
        ["exchange", "created_at"],
        postgresql_where=sa.text("side = 'short' AND status = 'open'"),
    )
    op.create_index(
        "ix_positions_closed_longs",
        "positions",
        ["bot", "symbol", "closed_at"],
        postgresql_where=sa.text("side = 'long' AND status = 'closed'"),
    )
    op.create_table(
        "orders",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("position_id", sa.BigInteger()),
        sa.Column("intent", sa.Text(), nullable=False),
        sa.Column("exchange", sa.Text(), nullable=False),
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("side", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False, server_default=sa.text("'market'")),
        sa.Column("quantity", DEC, nullable=False),
        sa.Column("reduce_only", sa.Boolean(), nullable=False),
        sa.Column("client_order_id", sa.Text(), nullable=False),
        sa.Column("exchange_order_id", sa.Text()),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("filled_quantity", DEC, nullable=False, server_default=sa.text("0")),
        sa.Column("average_price", DEC),
        sa.Column("attempt", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("submissions", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("error_class", sa.Text()),
        sa.Column("error_code", sa.Text()),
        sa.Column("error_message", sa.Text()),
        sa.Column("created_at", TS, nullable=False, server_default=_now()),
        sa.Column("updated_at", TS, nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("id", name="pk_orders"),
        sa.ForeignKeyConstraint(["position_id"], ["positions.id"], name="fk_orders_position_id_positions"),
        sa.UniqueConstraint("client_order_id", name="uq_orders_client_order_id"),
        sa.CheckConstraint("intent IN ('open', 'close')", name="ck_orders_intent"),
        sa.CheckConstraint("side IN ('buy', 'sell')", name="ck_orders_side"),
        sa.CheckConstraint("type IN ('market', 'limit')", name="ck_orders_type"),
        sa.CheckConstraint(
            "status IN ('pending', 'filled', 'partially_filled', 'rejected', 'not_sent')",
            name="ck_orders_status",
        ),
        sa.CheckConstraint("quantity > 0", name="ck_orders_quantity_positive"),
        sa.CheckConstraint(
            "filled_quantity >= 0 AND filled_quantity <= quantity", name="ck_orders_filled_within_quantity"
        ),
        sa.CheckConstraint("intent <> 'close' OR position_id IS NOT NULL", name="ck_orders_close_references_position"),
        sa.CheckConstraint("intent <> 'close' OR reduce_only", name="ck_orders_close_is_reduce_only"),
        sa.CheckConstraint(
            "error_class IS NULL OR error_class IN ('transient', 'permanent', 'verify')",
            name="ck_orders_error_class",
        ),
    )
    op.create_index("ix_orders_position_id", "orders", ["position_id"])
    op.create_table(
        "paper_balances",
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("balance", DEC, nullable=False),
        sa.Column("updated_at", TS, nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("account", name="pk_paper_balances"),
    )
    op.create_table(
        "paper_positions",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("position_id", sa.BigInteger()),
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("side", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("quantity", DEC, nullable=False),
        sa.Column("entry_price", DEC, nullable=False),
        sa.Column("exit_price", DEC),
        sa.Column("realized_pnl", DEC),
        sa.Column("opened_at", TS, nullable=False, server_default=_now()),
        sa.Column("closed_at", TS),
        sa.Column("updated_at", TS, nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("id", name="pk_paper_positions"),
        sa.ForeignKeyConstraint(["position_id"], ["positions.id"], name="fk_paper_positions_position_id_positions"),
        sa.UniqueConstraint("position_id", name="uq_paper_positions_position_id"),
        sa.CheckConstraint("side IN ('long', 'short')", name="ck_paper_positions_side"),
        sa.CheckConstraint("status IN ('open', 'closed')", name="ck_paper_positions_status"),
        sa.CheckConstraint("quantity >= 0", name="ck_paper_positions_quantity_not_negative"),
    )
    op.create_index("ix_paper_positions_account_status", "paper_positions", ["account", "status"])
    op.create_table(
        "paper_fills",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("client_order_id", sa.Text(), nullable=False),
        sa.Column("paper_position_id", sa.BigInteger(), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("side", sa.Text(), nullable=False),
        sa.Column("reduce_only", sa.Boolean(), nullable=False),
        sa.Column("quantity", DEC, nullable=False),
        sa.Column("price", DEC, nullable=False),
        sa.Column("realized_pnl", DEC),
        sa.Column("created_at", TS, nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("id", name="pk_paper_fills"),
        sa.ForeignKeyConstraint(
            ["paper_position_id"],
            ["paper_positions.id"],
            name="fk_paper_fills_paper_position_id_paper_positions",
        ),
        sa.UniqueConstraint("client_order_id", name="uq_paper_fills_client_order_id"),
        sa.CheckConstraint("side IN ('buy', 'sell')", name="ck_paper_fills_side"),
        sa.CheckConstraint("quantity > 0", name="ck_paper_fills_quantity_positive"),
    )
    op.create_table(
        "maintenance_runs",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("started_at", TS, nullable=False, server_default=_now()),
        sa.Column("finished_at", TS),
        sa.Column("found", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("report", postgresql.JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.PrimaryKeyConstraint("id", name="pk_maintenance_runs"),
    )
    op.create_index("ix_maintenance_runs_kind_started", "maintenance_runs", ["kind", "started_at"])
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("at", TS, nullable=False, server_default=_now()),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("entity", sa.Text(), nullable=False),
        sa.Column("entity_id", sa.Text(), nullable=False),
        sa.Column("before", postgresql.JSONB()),
        sa.Column("after", postgresql.JSONB()),
        sa.Column("run_id", sa.BigInteger()),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
        sa.ForeignKeyConstraint(["run_id"], ["maintenance_runs.id"], name="fk_audit_events_run_id_maintenance_runs"),
    )
    op.create_index("ix_audit_events_entity", "audit_events", ["entity", "entity_id"])


def downgrade() -> None:
    op.drop_table("audit_events")
    op.drop_table("maintenance_runs")
    op.drop_table("paper_fills")
    op.drop_table("paper_positions")
    op.drop_table("paper_balances")
    op.drop_table("orders")
    op.drop_table("positions")
    op.drop_table("bots")
