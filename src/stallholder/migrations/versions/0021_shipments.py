"""shipments: an order's parcel, and the sold movement

Revision ID: 0021
Revises: 0014
Create Date: 2026-11-30 16:55:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import stallholder.kit.db

revision: str = "0021"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shipments",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("creator_id", sa.String(length=40), nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=False),
        sa.Column("carrier", sa.String(length=80), nullable=True),
        sa.Column("tracking_number", sa.String(length=120), nullable=True),
        sa.Column("tracking_url", sa.String(length=500), nullable=True),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("created_at", stallholder.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["creator_id"], ["creators.id"], name=op.f("fk_shipments_creator_id_creators")
        ),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_shipments_order_id_orders")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shipments")),
        sa.UniqueConstraint("order_id", name=op.f("uq_shipments_order_id")),
    )
    op.create_index(
        "ix_shipments_creator_order", "shipments", ["creator_id", "order_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_shipments_creator_order", table_name="shipments")
    op.drop_table("shipments")
