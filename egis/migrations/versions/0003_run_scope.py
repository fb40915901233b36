"""Maintenance runs name what they covered (`scope`: e.g. the exchange account of a sync), so the
last report per account can be found (`egis positions --orphans`).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("maintenance_runs", sa.Column("scope", sa.Text(), nullable=True))
    op.create_index("ix_maintenance_runs_kind_scope_started", "maintenance_runs", ["kind", "scope", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_maintenance_runs_kind_scope_started", table_name="maintenance_runs")
    op.drop_column("maintenance_runs", "scope")
