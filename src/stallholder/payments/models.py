from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from stallholder.kit.db import Base


class PaymentAttempt(Base):
    """One charge of a payment method for a purpose, whatever came of it.

    ``processing`` is recorded before the gateway is called (ADR 0007); the outcome
    (``succeeded``, ``requires_action`` or ``failed``) replaces it afterwards. An attempt
    still ``processing`` after ``resolve_after`` is resolved by the worker, which asks the
    gateway again with the same idempotency key.
    """

    __tablename__ = "payment_attempts"
    __table_args__ = (UniqueConstraint("purpose", "purpose_id", "attempt_number"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    # What the money is for: checkout_session | invoice | wallet_top_up, and its id.
    purpose: Mapped[str] = mapped_column(String(24))
    purpose_id: Mapped[str] = mapped_column(String(40))
    attempt_number: Mapped[int]
    gateway: Mapped[str] = mapped_column(String(16))
    idempotency_key: Mapped[str] = mapped_column(String(120), unique=True)
    # The gateway's payment method (a sandbox token, a Stripe pm_…), and the saved method
    # it came from when the buyer saved it to a customer.
    payment_method: Mapped[str] = mapped_column(String(64))
    saved_payment_method_id: Mapped[str | None] = mapped_column(String(40), default=None)
    # Off-session charges name the gateway's customer the payment method is saved to.
    is_off_session: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    gateway_customer: Mapped[str | None] = mapped_column(String(120), default=None)
    # Where the gateway pays the creator directly: kept so a retry sends the same request.
    connected_account: Mapped[str | None] = mapped_column(String(120), default=None)
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    # processing | succeeded | requires_action | failed
    status: Mapped[str] = mapped_column(String(16))
    # While processing: when the worker may take over and ask the gateway itself.
    resolve_after: Mapped[datetime | None] = mapped_column(default=None)
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


Index(
    "ix_payment_attempts_processing",
    PaymentAttempt.resolve_after,
    postgresql_where=PaymentAttempt.status == "processing",
    sqlite_where=PaymentAttempt.status == "processing",
)


class PaymentMethod(Base):
    """A payment method the buyer saved, reusable off-session (renewals, invoices, wallet
    top-ups) by the creators it is granted to (ADR 0011).

    It belongs to the buyer: ``creator_id`` and ``customer_id`` say through which
    creator's customer it was saved (the first grant). ``gateway_reference`` is the
    gateway's own id (a sandbox token, a Stripe ``pm_…``) and ``gateway_customer`` the
    gateway's customer it is attached to, one per buyer (with Stripe, one platform
    Customer). A detached method stays for the record and can no longer be charged.
    """

    __tablename__ = "payment_methods"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    buyer_id: Mapped[str] = mapped_column(ForeignKey("buyers.id"), index=True)
    gateway: Mapped[str] = mapped_column(String(16))
    gateway_customer: Mapped[str] = mapped_column(String(120))
    gateway_reference: Mapped[str] = mapped_column(String(120))
    type: Mapped[str] = mapped_column(String(16), default="card")
    detached_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime]


class PaymentMethodGrant(Base):
    """The buyer's consent that one creator (through its customer) may charge a saved
    method off-session. Made when the buyer saves the method with that creator, or saves
    the same method again there. At most one grant per customer is its default: the
    default is per creator, since each creator bills the buyer on its own terms."""

    __tablename__ = "payment_method_grants"
    __table_args__ = (
        Index(
            "uq_payment_method_grants_default",
            "customer_id",
            unique=True,
            postgresql_where=text("is_default"),
            sqlite_where=text("is_default"),
        ),
    )

    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), primary_key=True)
    payment_method_id: Mapped[str] = mapped_column(
        ForeignKey("payment_methods.id"), primary_key=True
    )
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    is_default: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime]


class SandboxCharge(Base):
    """The sandbox gateway's own memory of charges, by idempotency key: what a real
    processor keeps on its side. A charge asked for again with the same key gets the
    stored result back (``calls`` counts the asks), even after our process crashed.
    Written only by the sandbox gateway, in transactions of its own."""

    __tablename__ = "sandbox_charges"

    idempotency_key: Mapped[str] = mapped_column(String(120), primary_key=True)
    creator_id: Mapped[str | None] = mapped_column(String(40), default=None)
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    payment_method: Mapped[str] = mapped_column(String(64))
    is_off_session: Mapped[bool] = mapped_column(default=False)
    status: Mapped[str] = mapped_column(String(16))
    reference: Mapped[str | None] = mapped_column(String(120), default=None)
    processor_fee: Mapped[int] = mapped_column(default=0)
    decline_code: Mapped[str | None] = mapped_column(String(64), default=None)
    message: Mapped[str | None] = mapped_column(String(500), default=None)
    is_transient: Mapped[bool] = mapped_column(default=False)
    calls: Mapped[int] = mapped_column(default=1)


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
    syncing moves the ledger by the difference to what the current status implies. A
    dispute of a payment that paid several orders (a consolidated charge, ADR 0019) is
    one row per order, each with that order's part of the disputed amount and fee.
    """

    __tablename__ = "disputes"
    __table_args__ = (UniqueConstraint("external_id", "order_id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    gateway: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(String(120), index=True)
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    amount_withdrawn: Mapped[int] = mapped_column(default=0)
    # The processor's dispute fee (this order's part of it) as the gateway reports it
    # taken now, and what the ledger has taken from the creator for it so far.
    fee: Mapped[int] = mapped_column(default=0, server_default="0")
    fee_withdrawn: Mapped[int] = mapped_column(default=0, server_default="0")
    # When the state applied last was read from the gateway: an older read never wins.
    synced_at: Mapped[datetime]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
