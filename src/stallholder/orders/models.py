from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from stallholder.kit.db import Base, SerialPK


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    customer_email: Mapped[str] = mapped_column(String(320))
    checkout_session_id: Mapped[str] = mapped_column(String(40), unique=True)
    payment_attempt_id: Mapped[str] = mapped_column(ForeignKey("payment_attempts.id"))
    status: Mapped[str] = mapped_column(String(24))  # paid | partially_refunded | refunded
    currency: Mapped[str] = mapped_column(String(3))
    amount_subtotal: Mapped[int]
    amount_total: Mapped[int]
    amount_refunded: Mapped[int] = mapped_column(default=0)
    platform_fee: Mapped[int]
    processor_fee: Mapped[int]
    receipt_number: Mapped[str] = mapped_column(String(80))
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
    status: Mapped[str] = mapped_column(String(16))  # succeeded
    gateway_reference: Mapped[str] = mapped_column(String(120))
    platform_fee_reversed: Mapped[int]
    processor_fee_reversed: Mapped[int]
    created_at: Mapped[datetime]
