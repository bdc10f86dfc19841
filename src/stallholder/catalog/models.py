from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from stallholder.kit.db import Base


class Product(Base):
    __tablename__ = "products"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # digital | physical | service
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    # Image URLs, the first shown on the checkout page (as Stripe's product ``images``).
    images: Mapped[list[str]] = mapped_column(JSON, default=list, server_default=text("'[]'"))
    status: Mapped[str] = mapped_column(String(16))  # draft | published | archived
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    variants: Mapped[list[Variant]] = relationship(
        order_by="Variant.position", lazy="selectin", back_populates="product"
    )


class Variant(Base):
    __tablename__ = "variants"
    __table_args__ = (UniqueConstraint("creator_id", "sku"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id"), index=True)
    sku: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(default=0)
    is_default: Mapped[bool] = mapped_column(default=False)
    weight_grams: Mapped[int | None] = mapped_column(default=None)
    length_mm: Mapped[int | None] = mapped_column(default=None)
    width_mm: Mapped[int | None] = mapped_column(default=None)
    height_mm: Mapped[int | None] = mapped_column(default=None)
    created_at: Mapped[datetime]

    product: Mapped[Product] = relationship(back_populates="variants")


class Price(Base):
    __tablename__ = "prices"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id"), index=True)
    type: Mapped[str] = mapped_column(String(24))  # one_time | pay_what_you_want | recurring
    currency: Mapped[str] = mapped_column(String(3))
    unit_amount: Mapped[int | None] = mapped_column(default=None)
    minimum_amount: Mapped[int | None] = mapped_column(default=None)
    maximum_amount: Mapped[int | None] = mapped_column(default=None)
    preset_amount: Mapped[int | None] = mapped_column(default=None)
    recurring_interval: Mapped[str | None] = mapped_column(String(8), default=None)
    recurring_interval_count: Mapped[int | None] = mapped_column(default=None)
    trial_days: Mapped[int | None] = mapped_column(default=None)
    # A recurring price's delivery calendar (billing/delivery.py): charge_day,
    # ship_days_after_charge, cutoff_days_before_ship, signup_after_cutoff.
    delivery_calendar: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    nickname: Mapped[str | None] = mapped_column(String(200), default=None)
    is_active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime]


class Collection(Base):
    __tablename__ = "collections"
    __table_args__ = (UniqueConstraint("creator_id", "slug"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(63))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]


class CollectionProduct(Base):
    __tablename__ = "collection_products"

    collection_id: Mapped[str] = mapped_column(ForeignKey("collections.id"), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id"), primary_key=True)
    position: Mapped[int] = mapped_column(default=0)
