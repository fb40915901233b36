"""Private streams: one status row per exchange account, written by the stream activity (which
worker holds it, connected since, last event, reconnects, lag, the positions it reported),
read by `egis streams` and by the exchange sync (a ghost the stream should have reported).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stream_status",
        sa.Column("exchange", sa.Text(), nullable=False),
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("connected", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("connected_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reconnects", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("events", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("lag_ms", sa.Integer(), nullable=True),
        sa.Column("worker", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("reported", postgresql.JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("exchange", "account", name="pk_stream_status"),
    )


def downgrade() -> None:
    op.drop_table("stream_status")
