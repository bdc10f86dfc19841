"""portal: sign-in links, retention offers, customer country, platform emails

Revision ID: 0017
Revises: 0021
Create Date: 2026-11-30 16:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import stallholder.kit.db

revision: str = "0017"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sign_in_links",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("audience", sa.String(length=16), nullable=False),
        sa.Column("email_key", sa.String(length=320), nullable=False),
        sa.Column("subject_id", sa.String(length=40), nullable=True),
        sa.Column("creator_id", sa.String(length=40), nullable=True),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("requested_ip", sa.String(length=64), nullable=True),
        sa.Column("created_at", stallholder.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", stallholder.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("used_at", stallholder.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["creator_id"], ["creators.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("sign_in_links", schema=None) as batch_op:
        batch_op.create_index(
            "ix_sign_in_links_email_created", ["email_key", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_sign_in_links_ip_created", ["requested_ip", "created_at"], unique=False
        )

    op.create_table(
        "retention_offers",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("creator_id", sa.String(length=40), nullable=False),
        sa.Column("price_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("percent_off", sa.BigInteger(), nullable=True),
        sa.Column("duration_cycles", sa.BigInteger(), nullable=True),
        sa.Column("created_at", stallholder.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", stallholder.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["creator_id"], ["creators.id"]),
        sa.ForeignKeyConstraint(["price_id"], ["prices.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("price_id", name="uq_retention_offers_price"),
    )
    with op.batch_alter_table("retention_offers", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_retention_offers_creator_id"), ["creator_id"], unique=False
        )

    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("country", sa.String(length=2), nullable=True))

    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("retention_offer_outcome", sa.String(length=16), nullable=True)
        )
        batch_op.add_column(
            sa.Column(
                "retention_offer_at", stallholder.kit.db.UTCDateTime(timezone=True), nullable=True
            )
        )
        batch_op.add_column(sa.Column("discount_percent_off", sa.BigInteger(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "discount_cycles_remaining", sa.BigInteger(), server_default="0", nullable=False
            )
        )

    with op.batch_alter_table("emails", schema=None) as batch_op:
        batch_op.alter_column("creator_id", existing_type=sa.String(length=40), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("emails", schema=None) as batch_op:
        batch_op.alter_column("creator_id", existing_type=sa.String(length=40), nullable=False)
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_column("discount_cycles_remaining")
        batch_op.drop_column("discount_percent_off")
        batch_op.drop_column("retention_offer_at")
        batch_op.drop_column("retention_offer_outcome")
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.drop_column("country")
    with op.batch_alter_table("retention_offers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_retention_offers_creator_id"))
    op.drop_table("retention_offers")
    with op.batch_alter_table("sign_in_links", schema=None) as batch_op:
        batch_op.drop_index("ix_sign_in_links_ip_created")
        batch_op.drop_index("ix_sign_in_links_email_created")
    op.drop_table("sign_in_links")
