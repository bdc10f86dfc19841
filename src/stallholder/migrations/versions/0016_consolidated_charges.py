"""consolidated charges: one card charge for a buyer's invoices across creators

Revision ID: 0016
Revises: 0018
Create Date: 2026-11-30 17:00:00.000000

``orders.payment_attempt_id`` stops being unique: a consolidated charge (one payment
attempt) pays several creators' invoices, each with its own order (ADR 0019).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import stallholder.kit.db

revision: str = "0016"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "consolidated_charges",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("buyer_id", sa.String(length=40), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("charge_day", sa.String(length=10), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("payment_attempt_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", stallholder.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["buyer_id"], ["buyers.id"], name=op.f("fk_consolidated_charges_buyer_id_buyers")
        ),
        sa.ForeignKeyConstraint(
            ["payment_attempt_id"],
            ["payment_attempts.id"],
            name=op.f("fk_consolidated_charges_payment_attempt_id_payment_attempts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consolidated_charges")),
        sa.UniqueConstraint(
            "buyer_id",
            "currency",
            "charge_day",
            "sequence",
            name=op.f("uq_consolidated_charges_buyer_id_currency_charge_day_sequence"),
        ),
    )
    with op.batch_alter_table("consolidated_charges", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_consolidated_charges_buyer_id"), ["buyer_id"], unique=False
        )
    op.create_table(
        "consolidated_charge_parts",
        sa.Column("charge_id", sa.String(length=40), nullable=False),
        sa.Column("invoice_id", sa.String(length=40), nullable=False),
        sa.Column("creator_id", sa.String(length=40), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("platform_fee", sa.BigInteger(), nullable=False),
        sa.Column("estimated_processor_fee", sa.BigInteger(), nullable=False),
        sa.Column("processor_fee", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["charge_id"],
            ["consolidated_charges.id"],
            name=op.f("fk_consolidated_charge_parts_charge_id_consolidated_charges"),
        ),
        sa.ForeignKeyConstraint(
            ["creator_id"],
            ["creators.id"],
            name=op.f("fk_consolidated_charge_parts_creator_id_creators"),
        ),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["invoices.id"],
            name=op.f("fk_consolidated_charge_parts_invoice_id_invoices"),
        ),
        sa.PrimaryKeyConstraint(
            "charge_id", "invoice_id", name=op.f("pk_consolidated_charge_parts")
        ),
    )
    with op.batch_alter_table("consolidated_charge_parts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_consolidated_charge_parts_creator_id"), ["creator_id"], unique=False
        )
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("consolidated_charge_id", sa.String(length=40), nullable=True)
        )
        batch_op.create_index(
            batch_op.f("ix_invoices_consolidated_charge_id"),
            ["consolidated_charge_id"],
            unique=False,
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_invoices_consolidated_charge_id_consolidated_charges"),
            "consolidated_charges",
            ["consolidated_charge_id"],
            ["id"],
        )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_orders_payment_attempt_id"), type_="unique")
        batch_op.create_index(
            batch_op.f("ix_orders_payment_attempt_id"), ["payment_attempt_id"], unique=False
        )
        batch_op.add_column(sa.Column("transfer_reference", sa.String(length=120), nullable=True))
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("transfer_reversal_amount", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.drop_column("transfer_reversal_amount")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("transfer_reference")
        batch_op.drop_index(batch_op.f("ix_orders_payment_attempt_id"))
        batch_op.create_unique_constraint(
            batch_op.f("uq_orders_payment_attempt_id"), ["payment_attempt_id"]
        )
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_invoices_consolidated_charge_id_consolidated_charges"),
            type_="foreignkey",
        )
        batch_op.drop_index(batch_op.f("ix_invoices_consolidated_charge_id"))
        batch_op.drop_column("consolidated_charge_id")
    with op.batch_alter_table("consolidated_charge_parts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consolidated_charge_parts_creator_id"))
    op.drop_table("consolidated_charge_parts")
    with op.batch_alter_table("consolidated_charges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consolidated_charges_buyer_id"))
    op.drop_table("consolidated_charges")
