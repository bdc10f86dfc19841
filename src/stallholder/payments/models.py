from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from stallholder.kit.db import Base


class PaymentAttempt(Base):
    """One call to a gateway to take money, whatever came of it."""

    __tablename__ = "payment_attempts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    checkout_session_id: Mapped[str] = mapped_column(String(40), index=True)
    attempt_number: Mapped[int]
    gateway: Mapped[str] = mapped_column(String(16))
    idempotency_key: Mapped[str] = mapped_column(String(120), unique=True)
    payment_method: Mapped[str] = mapped_column(String(64))
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))  # succeeded | requires_action | failed
    decline_code: Mapped[str | None] = mapped_column(String(64), default=None)
    failure_message: Mapped[str | None] = mapped_column(String(500), default=None)
    gateway_reference: Mapped[str | None] = mapped_column(String(120), default=None, index=True)
    # With requires_action: what the buyer's browser authenticates with (ChargeResult).
    action_secret: Mapped[str | None] = mapped_column(String(200), default=None)
    # The processor's actual fee, as the gateway reported it after the charge.
    processor_fee: Mapped[int] = mapped_column(default=0)
    # Fixed before charging (the gateway is told): the platform's fee and the processor fee
    # the creator bears; their sum is the charge's ``application_fee_amount``.
    # (A server default, so attempts recorded before these columns existed read as 0.)
    platform_fee: Mapped[int] = mapped_column(default=0, server_default="0")
    estimated_processor_fee: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime]


class ConnectedAccount(Base):
    """A creator's account at a gateway that pays creators directly (Stripe Connect)."""

    __tablename__ = "connected_accounts"
    __table_args__ = (UniqueConstraint("creator_id", "gateway"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    gateway: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(String(120), unique=True)
    created_at: Mapped[datetime]


class Dispute(Base):
    """A buyer's chargeback of an order's payment, as the gateway last reported it.

    ``amount_withdrawn`` is what the ledger has taken from the creator for it so far;
    syncing moves the ledger by the difference to what the current status implies.
    """

    __tablename__ = "disputes"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    gateway: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(String(120), unique=True)
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    amount_withdrawn: Mapped[int] = mapped_column(default=0)
    # When the state applied last was read from the gateway: an older read never wins.
    synced_at: Mapped[datetime]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
