from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
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
    gateway_reference: Mapped[str | None] = mapped_column(String(120), default=None)
    processor_fee: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime]
