"""checkout sessions: holds_stock (whether paying or expiring one moves any units)

Revision ID: 0020
Revises: 0015
Create Date: 2026-11-30 16:55:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing sessions get true: they are looked at as before (no backfill needed).
    with op.batch_alter_table("checkout_sessions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("holds_stock", sa.Boolean(), server_default=sa.text("true"), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("checkout_sessions", schema=None) as batch_op:
        batch_op.drop_column("holds_stock")
