from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from stallholder.kit.db import Base, SerialPK


class CheckoutSession(Base):
    __tablename__ = "checkout_sessions"
    __table_args__ = (Index("ix_checkout_sessions_status_expires", "status", "expires_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))  # open | complete | expired
    # payment (one-time prices) | subscription (recurring prices: confirming subscribes)
    mode: Mapped[str] = mapped_column(String(16), default="payment", server_default="payment")
    # Subscription mode: the renewal terms shown to the buyer, word for word (what the
    # consent record keeps), and the subscription the confirm created.
    renewal_terms: Mapped[str | None] = mapped_column(String(1000), default=None)
    subscription_id: Mapped[str | None] = mapped_column(String(40), default=None)
    # Subscription mode with the platform billing day (ADR 0020): the start of the billing
    # day the renewal terms promise as the first full charge; the subscription is aligned
    # there or the confirm is refused.
    billing_anchor: Mapped[datetime | None] = mapped_column(default=None)
    # unpaid | processing (the gateway is being asked) | requires_action | paid
    payment_status: Mapped[str] = mapped_column(String(24), default="unpaid")
    client_secret: Mapped[str] = mapped_column(String(100))
    customer_id: Mapped[str | None] = mapped_column(ForeignKey("customers.id"), default=None)
    customer_email: Mapped[str | None] = mapped_column(String(320), default=None)
    currency: Mapped[str] = mapped_column(String(3))
    amount_subtotal: Mapped[int]
    amount_total: Mapped[int]
    # Shipping (docs/shipping.md): a session with physical items from a creator who ships
    # needs an address before it is paid; the rate quoted for it is fixed with it.
    requires_shipping: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    shipping_weight_grams: Mapped[int] = mapped_column(default=0, server_default="0")
    shipping_address: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True), default=None
    )
    shipping_rate_id: Mapped[str | None] = mapped_column(String(40), default=None)
    shipping_rate_name: Mapped[str | None] = mapped_column(String(100), default=None)
    amount_shipping: Mapped[int] = mapped_column(default=0, server_default="0")
    success_url: Mapped[str | None] = mapped_column(String(2000), default=None)
    cancel_url: Mapped[str | None] = mapped_column(String(2000), default=None)
    checkout_link_id: Mapped[str | None] = mapped_column(String(40), default=None)
    order_id: Mapped[str | None] = mapped_column(String(40), default=None)
    last_error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    last_error_message: Mapped[str | None] = mapped_column(String(500), default=None)
    # While ``payment_status`` is ``requires_action``: what the buyer's browser needs to
    # authenticate with the gateway (Stripe: the PaymentIntent's client secret).
    payment_action_secret: Mapped[str | None] = mapped_column(String(200), default=None)
    # False when the session was opened holding no drop units and no stock (untracked items
    # outside any drop): paying or expiring it then moves nothing, and skips the two
    # statements that would find nothing to move. True when it holds some, and for every
    # row from before the column (the safe answer: look).
    holds_stock: Mapped[bool] = mapped_column(default=True, server_default=text("true"))
    expires_at: Mapped[datetime]
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime]

    line_items: Mapped[list[CheckoutLineItem]] = relationship(
        order_by="CheckoutLineItem.position", lazy="selectin"
    )


class CheckoutLineItem(Base):
    __tablename__ = "checkout_line_items"

    id: Mapped[SerialPK]
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    session_id: Mapped[str] = mapped_column(ForeignKey("checkout_sessions.id"), index=True)
    position: Mapped[int]
    price_id: Mapped[str] = mapped_column(ForeignKey("prices.id"))
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id"))
    variant_id: Mapped[str] = mapped_column(ForeignKey("variants.id"))
    sku: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(300))
    quantity: Mapped[int]
    unit_amount: Mapped[int]
    amount_total: Mapped[int]


class CheckoutLink(Base):
    """A reusable URL: each visit opens a new session for the same line items."""

    __tablename__ = "checkout_links"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    line_items: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    success_url: Mapped[str | None] = mapped_column(String(2000), default=None)
    is_active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime]
