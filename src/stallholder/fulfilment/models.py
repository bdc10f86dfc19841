from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from stallholder.kit.db import Base


class ShippingRate(Base):
    """One of a creator's shipping rates: a zone (``countries``, or None for the rest of
    the world), a currency and a price (flat ``amount`` or ``weight_bands``)."""

    __tablename__ = "shipping_rates"
    __table_args__ = (Index("ix_shipping_rates_creator_active", "creator_id", "is_active"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    display_name: Mapped[str] = mapped_column(String(100))
    currency: Mapped[str] = mapped_column(String(3))
    # Upper-case ISO 3166-1 alpha-2 codes, sorted; None: every country no other zone names.
    countries: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True), default=None)
    type: Mapped[str] = mapped_column(String(16))  # flat | by_weight
    amount: Mapped[int | None] = mapped_column(default=None)
    # [{"up_to_grams": int, "amount": int}, ...] ascending, for ``by_weight``.
    weight_bands: Mapped[list[dict[str, Any]] | None] = mapped_column(
        JSON(none_as_null=True), default=None
    )
    free_shipping_threshold: Mapped[int | None] = mapped_column(default=None)
    is_active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Shipment(Base):
    """An order's parcel leaving the creator: every allocated unit of the order at once.
    Shipping turns the allocation into a ``sold`` movement (``on_hand`` and ``allocated``
    fall together), so the stock ledger says what left the shelf and when."""

    __tablename__ = "shipments"
    __table_args__ = (Index("ix_shipments_creator_order", "creator_id", "order_id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), unique=True)
    carrier: Mapped[str | None] = mapped_column(String(80), default=None)
    tracking_number: Mapped[str | None] = mapped_column(String(120), default=None)
    tracking_url: Mapped[str | None] = mapped_column(String(500), default=None)
    # What left, per SKU: [{"sku", "quantity"}].
    items: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime]
