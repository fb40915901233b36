"""Partial indexes for set-based maintenance detection (paper reconciliation).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_paper_positions_open",
        "paper_positions",
        ["position_id"],
        postgresql_where=sa.text("status = 'open'"),
    )
    op.create_index(
        "ix_positions_live_paper",
        "positions",
        ["id"],
        postgresql_where=sa.text("exchange = 'paper' AND status IN ('open', 'closing')"),
    )


def downgrade() -> None:
    op.drop_index("ix_positions_live_paper", table_name="positions")
    op.drop_index("ix_paper_positions_open", table_name="paper_positions")
