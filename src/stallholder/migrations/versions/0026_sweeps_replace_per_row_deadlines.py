"""sweeps replace per-row deadline work: drop the per-session expiry and per-charge
settlement items (ADR 0029)

Open checkout sessions are now expired, and charges and refunds left half done settled,
by periodic sweeps that read the rows themselves, so the items that were enqueued for
each session, attempt and refund have nothing left to do. The sweeps find every such row
on their first run.

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-01 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0026"
down_revision: str | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every item of the old per-row kinds; the new sweeps' schedules are the items whose
    # dedupe key is the kind's name, and "checkout.expire_sessions" is a new name.
    op.execute(
        sa.text(
            "DELETE FROM work_items WHERE kind = 'checkout.expire_session' "
            "OR (kind IN ('payments.settle_attempts', 'orders.settle_refunds') "
            "AND (dedupe_key IS NULL OR dedupe_key <> kind))"
        )
    )


def downgrade() -> None:
    # The older code enqueued an item per row: give each open session, each attempt still
    # processing and each refund still pending its item again, and drop the schedules.
    op.execute(
        sa.text(
            "DELETE FROM work_items WHERE kind IN "
            "('checkout.expire_sessions', 'payments.settle_attempts', 'orders.settle_refunds')"
        )
    )
    build = "json_build_object" if op.get_bind().dialect.name == "postgresql" else "json_object"
    columns = "id, kind, payload, creator_id, dedupe_key, state, due_at, attempts, created_at"
    for kind, key, table, due, where, dedupe in (
        (
            "checkout.expire_session",
            "session_id",
            "checkout_sessions",
            "expires_at",
            "status = 'open'",
            "id",
        ),
        (
            "payments.settle_attempts",
            "attempt",
            "payment_attempts",
            "resolve_after",
            "status = 'processing' AND resolve_after IS NOT NULL",
            None,
        ),
        (
            "orders.settle_refunds",
            "refund",
            "refunds",
            "resolve_after",
            "status = 'pending' AND resolve_after IS NOT NULL",
            None,
        ),
    ):
        # Every part is a constant of this migration: nothing comes from outside.
        op.execute(
            sa.text(
                f"INSERT INTO work_items ({columns}, updated_at) "  # noqa: S608
                f"SELECT 'wrk_' || id, '{kind}', {build}('{key}', id), creator_id, "
                f"{dedupe or 'NULL'}, 'pending', {due}, 0, created_at, created_at "
                f"FROM {table} WHERE {where}"
            )
        )
