from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from stallholder.kit.db import Base


class Creator(Base):
    __tablename__ = "creators"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))
    # Per-creator override of the platform fee; None means the platform default.
    platform_fee_bps: Mapped[int | None] = mapped_column(default=None)
    # The fixed part per currency: {"usd": 30} is 30 cents on usd charges; other currencies
    # keep the platform's fixed part (ADR 0006).
    platform_fee_fixed_amounts: Mapped[dict[str, int] | None] = mapped_column(JSON, default=None)
    receipt_counter: Mapped[int] = mapped_column(default=0)
    # The sites (``https://shop.example``) that may embed this creator's checkout and
    # open sessions from a browser with the publishable key (docs/checkout-pages.md).
    allowed_origins: Mapped[list[str]] = mapped_column(
        JSON, default=list, server_default=text("'[]'")
    )
    # Whether the public store index shows the creator and its store pages exist
    # (docs/store.md): opt-in for new creators; creators from before the setting keep
    # the listing they had.
    listed: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    created_at: Mapped[datetime]


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "secret" | "publishable"
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    redacted: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Buyer(Base):
    """One person on the platform, whichever creators they buy from (ADR 0011).

    Found by ``email_key`` (``accounts.emails.buyer_key``); each creator's ``Customer``
    links to it. Payment methods and wallets belong to the buyer. Platform-wide: no
    creator owns a buyer, and no creator reads one directly, only its own customer.
    """

    __tablename__ = "buyers"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    created_at: Mapped[datetime]


class Customer(Base):
    """A creator's record of a buyer: what that creator knows and may see of them."""

    __tablename__ = "customers"
    __table_args__ = (Index("ix_customers_creator_email", "creator_id", "email"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    buyer_id: Mapped[str] = mapped_column(ForeignKey("buyers.id"), index=True)
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    time_zone: Mapped[str] = mapped_column(String(64), default="UTC")
    # Where the buyer lives (ISO 3166-1 alpha-2), when known: given by the creator or taken
    # from a shipping address. The EU/UK right of withdrawal depends on it (docs/billing.md).
    country: Mapped[str | None] = mapped_column(String(2), default=None)
    # A customer created on a test clock is billed at the clock's time (billing/clocks.py).
    test_clock_id: Mapped[str | None] = mapped_column(
        ForeignKey("test_clocks.id"), index=True, default=None
    )
    created_at: Mapped[datetime]


class TestClock(Base):
    """A simulated time for billing tests, as Stripe has them (docs/billing.md). Customers
    created on it are billed at ``frozen_time``; advancing it runs their due work. A clock
    made with the admin key (``creator_id`` None) may be used by every creator; a
    creator's clock only by that creator. Here, beside customers, because a customer names
    its clock; the billing package owns what clocks do."""

    __tablename__ = "test_clocks"
    __test__ = False  # not a pytest class

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str | None] = mapped_column(
        ForeignKey("creators.id"), index=True, default=None
    )
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    frozen_time: Mapped[datetime]
    # ready | advancing
    status: Mapped[str] = mapped_column(String(16), default="ready")
    created_at: Mapped[datetime]


class SignInLink(Base):
    """A magic sign-in link: single use, expiring, stored as the SHA-256 of its token.

    ``audience`` says who it signs in: a ``buyer`` (the portal, ``subject_id`` a buyer
    id) or a ``creator`` (the dashboard, ``subject_id`` and ``creator_id`` the creator).
    Every request is a row, also one for an address nobody has (``subject_id`` None, no
    email sent), so the per-address and per-IP limits count what was asked, and the
    answer never tells whether an address is known (docs/portal.md).
    """

    __tablename__ = "sign_in_links"
    __table_args__ = (
        Index("ix_sign_in_links_email_created", "email_key", "created_at"),
        Index("ix_sign_in_links_ip_created", "requested_ip", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    audience: Mapped[str] = mapped_column(String(16))  # buyer | creator
    email_key: Mapped[str] = mapped_column(String(320))
    subject_id: Mapped[str | None] = mapped_column(String(40), default=None)
    # The creator a dashboard link signs in to (the distribution key); None for buyers,
    # who belong to the platform.
    creator_id: Mapped[str | None] = mapped_column(ForeignKey("creators.id"), default=None)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    requested_ip: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None] = mapped_column(default=None)
