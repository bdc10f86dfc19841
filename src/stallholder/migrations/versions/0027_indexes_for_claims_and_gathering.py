"""indexes that keep a renewal run's cost flat as its tables grow: live work by kind,
gatherable invoices by customer

A claim of one kind's due work read every live item due now, of every kind, through
``ix_work_items_due`` (state, due_at); a charge batch's count of each buyer's gatherable
invoices read every invoice with no consolidated charge. Both grew with the run
(docs/performance.md, "Renewals").

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-02 08:55:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0027"
down_revision: str | None = "0026"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIVE = "state IN ('pending', 'running')"
_GATHERABLE = (
    "status = 'open' AND attempt_count = 0 AND billing_reason = 'subscription_cycle' "
    "AND consolidated_charge_id IS NULL"
)


def upgrade() -> None:
    with op.batch_alter_table("work_items", schema=None) as batch_op:
        batch_op.create_index(
            "ix_work_items_live_kind_due",
            ["kind", "due_at", "id"],
            unique=False,
            sqlite_where=sa.text(_LIVE),
            postgresql_where=sa.text(_LIVE),
        )
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.create_index(
            "ix_invoices_gatherable_customer",
            ["customer_id"],
            unique=False,
            sqlite_where=sa.text(_GATHERABLE),
            postgresql_where=sa.text(_GATHERABLE),
        )


def downgrade() -> None:
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_index("ix_invoices_gatherable_customer")
    with op.batch_alter_table("work_items", schema=None) as batch_op:
        batch_op.drop_index("ix_work_items_live_kind_due")
