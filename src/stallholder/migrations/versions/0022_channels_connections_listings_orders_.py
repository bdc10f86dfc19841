"""channels: connections, listings, orders, sync log

Revision ID: 0022
Revises: 0020
Create Date: 2026-11-30 20:15:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import stallholder.kit.db

revision: str = "0022"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "channel_sweep_marks",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("swept_to", stallholder.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_sweep_marks")),
    )
    op.create_table(
        "channels",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("creator_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("url", sa.String(length=500), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("paused_reason", sa.String(length=500), nullable=True),
        sa.Column("credentials", sa.Text(), nullable=False),
        sa.Column("buffer_units", sa.BigInteger(), nullable=False),
        sa.Column("buffer_percent", sa.BigInteger(), nullable=False),
        sa.Column("max_shown", sa.BigInteger(), nullable=True),
        sa.Column("zero_below", sa.BigInteger(), nullable=True),
        sa.Column("rate_state", sa.JSON(), nullable=False),
        sa.Column("orders_cursor", sa.String(length=100), nullable=True),
        sa.Column("next_poll_at", stallholder.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "next_reconcile_at", stallholder.kit.db.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("webhooks", sa.JSON(), nullable=False),
        sa.Column("created_at", stallholder.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", stallholder.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["creator_id"], ["creators.id"], name=op.f("fk_channels_creator_id_creators")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channels")),
    )
    with op.batch_alter_table("channels", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_channels_creator_id"), ["creator_id"], unique=False)

    op.create_table(
        "channel_orders",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("channel_id", sa.String(length=40), nullable=False),
        sa.Column("creator_id", sa.String(length=40), nullable=False),
        sa.Column("external_id", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("lines", sa.JSON(), nullable=False),
        sa.Column("placed_at", stallholder.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_at", stallholder.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", stallholder.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["channel_id"], ["channels.id"], name=op.f("fk_channel_orders_channel_id_channels")
        ),
        sa.ForeignKeyConstraint(
            ["creator_id"], ["creators.id"], name=op.f("fk_channel_orders_creator_id_creators")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_orders")),
        sa.UniqueConstraint(
            "channel_id", "external_id", name=op.f("uq_channel_orders_channel_id_external_id")
        ),
    )
    with op.batch_alter_table("channel_orders", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_channel_orders_channel_id"), ["channel_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_channel_orders_creator_id"), ["creator_id"], unique=False
        )

    op.create_table(
        "channel_sync_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("channel_id", sa.String(length=40), nullable=False),
        sa.Column("creator_id", sa.String(length=40), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=True),
        sa.Column("external_id", sa.String(length=200), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("pushed", sa.BigInteger(), nullable=True),
        sa.Column("channel_value", sa.BigInteger(), nullable=True),
        sa.Column("latency_ms", sa.BigInteger(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.String(length=500), nullable=True),
        sa.Column("created_at", stallholder.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["channel_id"], ["channels.id"], name=op.f("fk_channel_sync_log_channel_id_channels")
        ),
        sa.ForeignKeyConstraint(
            ["creator_id"], ["creators.id"], name=op.f("fk_channel_sync_log_creator_id_creators")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_sync_log")),
    )
    with op.batch_alter_table("channel_sync_log", schema=None) as batch_op:
        batch_op.create_index("ix_channel_sync_log_channel", ["channel_id", "id"], unique=False)

    op.create_table(
        "channel_listings",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("channel_id", sa.String(length=40), nullable=False),
        sa.Column("creator_id", sa.String(length=40), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("extra", sa.JSON(), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=True),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("price", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("variant_id", sa.String(length=40), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("channel_quantity", sa.BigInteger(), nullable=True),
        sa.Column("pushed_quantity", sa.BigInteger(), nullable=True),
        sa.Column("pushed_at", stallholder.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("writes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", stallholder.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", stallholder.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["channel_id"], ["channels.id"], name=op.f("fk_channel_listings_channel_id_channels")
        ),
        sa.ForeignKeyConstraint(
            ["creator_id"], ["creators.id"], name=op.f("fk_channel_listings_creator_id_creators")
        ),
        sa.ForeignKeyConstraint(
            ["variant_id"], ["variants.id"], name=op.f("fk_channel_listings_variant_id_variants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_listings")),
        sa.UniqueConstraint(
            "channel_id", "external_id", name=op.f("uq_channel_listings_channel_id_external_id")
        ),
    )
    with op.batch_alter_table("channel_listings", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_channel_listings_channel_id"), ["channel_id"], unique=False
        )
        batch_op.create_index("ix_channel_listings_variant", ["variant_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("channel_listings", schema=None) as batch_op:
        batch_op.drop_index("ix_channel_listings_variant")
        batch_op.drop_index(batch_op.f("ix_channel_listings_channel_id"))

    op.drop_table("channel_listings")
    with op.batch_alter_table("channel_sync_log", schema=None) as batch_op:
        batch_op.drop_index("ix_channel_sync_log_channel")

    op.drop_table("channel_sync_log")
    with op.batch_alter_table("channel_orders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_channel_orders_creator_id"))
        batch_op.drop_index(batch_op.f("ix_channel_orders_channel_id"))

    op.drop_table("channel_orders")
    with op.batch_alter_table("channels", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_channels_creator_id"))

    op.drop_table("channels")
    op.drop_table("channel_sweep_marks")
