from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from stallholder.kit.db import Base, SerialPK


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    customer_email: Mapped[str] = mapped_column(String(320))
    # What was sold: a checkout session or an invoice (one of them).
    checkout_session_id: Mapped[str | None] = mapped_column(String(40), unique=True, default=None)
    invoice_id: Mapped[str | None] = mapped_column(String(40), unique=True, default=None)
    # The charge that paid it. Several orders share one when a consolidated charge paid a
    # buyer's invoices across creators at once (ADR 0019); otherwise one charge, one order.
    payment_attempt_id: Mapped[str] = mapped_column(ForeignKey("payment_attempts.id"), index=True)
    status: Mapped[str] = mapped_column(String(24))  # paid | partially_refunded | refunded
    currency: Mapped[str] = mapped_column(String(3))
    amount_subtotal: Mapped[int]
    # The shipping line (docs/shipping.md): ``amount_total = amount_subtotal + amount_shipping``.
    amount_shipping: Mapped[int] = mapped_column(default=0, server_default="0")
    shipping_address: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True), default=None
    )
    shipping_rate_id: Mapped[str | None] = mapped_column(String(40), default=None)
    shipping_rate_name: Mapped[str | None] = mapped_column(String(100), default=None)
    amount_total: Mapped[int]
    amount_refunded: Mapped[int] = mapped_column(default=0)
    platform_fee: Mapped[int]
    processor_fee: Mapped[int]
    receipt_number: Mapped[str] = mapped_column(String(80))
    # A platform charge that paid the creator afterwards by a transfer (a consolidated
    # charge with Stripe, ADR 0019): that transfer, once made. A refund reverses from it.
    transfer_reference: Mapped[str | None] = mapped_column(String(120), default=None)
    # The amount of that transfer, fixed under the order's lock before it is first asked
    # for (so a retry asks for the same amount under the same key): the creator's share
    # less what refunds made before it reversed; 0 when nothing was left to transfer.
    transfer_amount: Mapped[int | None] = mapped_column(default=None)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    line_items: Mapped[list[OrderLineItem]] = relationship(
        order_by="OrderLineItem.id", lazy="selectin"
    )
    refunds: Mapped[list[Refund]] = relationship(order_by="Refund.created_at", lazy="selectin")


class OrderLineItem(Base):
    __tablename__ = "order_line_items"

    id: Mapped[SerialPK]
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    price_id: Mapped[str] = mapped_column(String(40))
    product_id: Mapped[str] = mapped_column(String(40))
    variant_id: Mapped[str] = mapped_column(String(40))
    sku: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(300))
    quantity: Mapped[int]
    unit_amount: Mapped[int]
    amount_total: Mapped[int]


class Refund(Base):
    __tablename__ = "refunds"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str | None] = mapped_column(String(64), default=None)
    # Whether the order's allocated stock goes back on sale when the refund succeeds.
    restock: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    # pending (recorded before the gateway is called) | succeeded | failed
    status: Mapped[str] = mapped_column(String(16))
    gateway_reference: Mapped[str | None] = mapped_column(String(120), default=None)
    # ``<order>:refund:<n>``; None only on refunds recorded before refunds were pending.
    idempotency_key: Mapped[str | None] = mapped_column(String(120), unique=True, default=None)
    # The client's Idempotency-Key (caller-scoped, hashed) when the refund was asked for
    # with one: a retry after a crash finds this refund and finishes it, never a second.
    request_key: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)
    failure_message: Mapped[str | None] = mapped_column(String(500), default=None)
    # While pending: when the worker may take over and ask the gateway itself.
    resolve_after: Mapped[datetime | None] = mapped_column(default=None)
    # The creator's part of the refund taken back from the order's transfer, when the
    # creator was paid by one (fixed when the refund is begun, ADR 0019).
    transfer_reversal_amount: Mapped[int | None] = mapped_column(default=None)
    # Set when the refund succeeds (the split of what is reversed).
    platform_fee_reversed: Mapped[int]
    processor_fee_reversed: Mapped[int]
    created_at: Mapped[datetime]
