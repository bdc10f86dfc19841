"""A buyer's prepaid balance per currency, its top-ups and its movements (ADR 0011)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from stallholder.kit.db import Base


class Wallet(Base):
    """A buyer's money held by the platform in one currency: a liability of the platform,
    mirrored by the ledger account ``wallet:<buyer>`` (``ledger.service.wallet_account``).

    ``balance`` changes only by conditional atomic updates (a debit is
    ``… WHERE balance >= :amount``) and a CHECK keeps it from ever going negative. Auto
    top-up: when a payment leaves the balance below ``auto_top_up_threshold``, the worker
    charges ``auto_top_up_amount`` to ``auto_top_up_payment_method_id`` through the grant
    of ``auto_top_up_customer_id`` (the creator whose customer set it up). Platform-wide:
    the buyer's, not one creator's.
    """

    __tablename__ = "wallets"
    __table_args__ = (
        UniqueConstraint("buyer_id", "currency"),
        CheckConstraint("balance >= 0", name="balance_not_negative"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    buyer_id: Mapped[str] = mapped_column(ForeignKey("buyers.id"))
    currency: Mapped[str] = mapped_column(String(3))
    balance: Mapped[int] = mapped_column(default=0)
    auto_top_up_threshold: Mapped[int | None] = mapped_column(default=None)
    auto_top_up_amount: Mapped[int | None] = mapped_column(default=None)
    auto_top_up_customer_id: Mapped[str | None] = mapped_column(
        ForeignKey("customers.id"), default=None
    )
    auto_top_up_payment_method_id: Mapped[str | None] = mapped_column(
        ForeignKey("payment_methods.id"), default=None
    )
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class WalletTopUp(Base):
    """A charge of the buyer's card that credits the wallet once it succeeds: the purpose
    ``wallet_top_up`` of payment attempts. ``creator_id`` and ``customer_id`` are whose
    customer asked for it (its grant charges the card); the money is the platform's to
    hold, not the creator's. ``request_key`` (the client's Idempotency-Key, or the auto
    top-up's work item) makes a retried request find the same top-up."""

    __tablename__ = "wallet_top_ups"
    __table_args__ = (UniqueConstraint("creator_id", "request_key"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    wallet_id: Mapped[str] = mapped_column(ForeignKey("wallets.id"), index=True)
    payment_method_id: Mapped[str] = mapped_column(ForeignKey("payment_methods.id"))
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    # processing | succeeded | failed
    status: Mapped[str] = mapped_column(String(16))
    is_automatic: Mapped[bool] = mapped_column(default=False)
    request_key: Mapped[str | None] = mapped_column(String(120), default=None)
    decline_code: Mapped[str | None] = mapped_column(String(64), default=None)
    failure_message: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class WalletTransaction(Base):
    """One movement of a wallet's balance: ``top_up`` (+), ``payment`` (−) to a creator, or
    ``refund`` (+) of such a payment (an immediate cancellation in the cooling-off window).
    At most one per (type, purpose, reference): a top-up credits once, and a purpose (an
    invoice) is paid from the wallet once. ``creator_id`` is the creator paid, or whose
    customer asked for the top-up; a creator is shown only its own payments."""

    __tablename__ = "wallet_transactions"
    __table_args__ = (
        UniqueConstraint("type", "purpose", "reference_id"),
        Index("ix_wallet_transactions_wallet", "wallet_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    wallet_id: Mapped[str] = mapped_column(ForeignKey("wallets.id"))
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    type: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    # What it was for: wallet_top_up (reference: the top-up) or the purpose paid
    # (invoice, …; reference: its id).
    purpose: Mapped[str] = mapped_column(String(24))
    reference_id: Mapped[str] = mapped_column(String(40))
    balance_after: Mapped[int]
    created_at: Mapped[datetime]
