"""Idempotent submission and shared back-off: orders remember when they were last sent (a
look-up's "not found" is absence only once the venue's lag has passed), and one back-off per
exchange account, shared by every worker (`exchange_backoffs`: no request goes out while the
venue has banned or throttled us).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "exchange_backoffs",
        sa.Column("exchange", sa.Text(), nullable=False),
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("exchange", "account", name="pk_exchange_backoffs"),
    )


def downgrade() -> None:
    op.drop_table("exchange_backoffs")
    op.drop_column("orders", "submitted_at")
