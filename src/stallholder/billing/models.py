"""Subscriptions, their items, invoices with lines, and consent records (docs/billing.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from stallholder.kit.db import Base, SerialPK


class Subscription(Base):
    """A customer's subscription to one or more recurring prices of one currency and plan.

    Periods are counted from ``billing_anchor`` on the customer's local calendar (ADR
    0009); ``current_period_index`` is the period under way, ``[current_period_start,
    current_period_end)``. The renewal of the next period is due work at
    ``current_period_end`` (ADR 0010).
    """

    __tablename__ = "subscriptions"
    __table_args__ = (
        Index("ix_subscriptions_creator_customer", "creator_id", "customer_id"),
        Index("ix_subscriptions_creator_status", "creator_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    # incomplete | trialing | active | past_due | unpaid | paused | canceled (lifecycle.py)
    status: Mapped[str] = mapped_column(String(16))
    currency: Mapped[str] = mapped_column(String(3))
    interval: Mapped[str] = mapped_column(String(8))
    interval_count: Mapped[int]
    default_payment_method_id: Mapped[str | None] = mapped_column(
        ForeignKey("payment_methods.id"), default=None
    )
    # The customer's zone when the subscription started; boundaries use the customer's
    # current zone (accounts), this is what the consent record showed.
    time_zone: Mapped[str] = mapped_column(String(64))
    test_clock_id: Mapped[str | None] = mapped_column(
        ForeignKey("test_clocks.id"), index=True, default=None
    )
    billing_anchor: Mapped[datetime]
    # The first period billed (a price's delivery calendar may count periods from an
    # earlier charge day), and that calendar, copied from the price at signup.
    first_period_index: Mapped[int] = mapped_column(default=0)
    delivery_calendar: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    current_period_index: Mapped[int]
    current_period_start: Mapped[datetime]
    current_period_end: Mapped[datetime]
    trial_start: Mapped[datetime | None] = mapped_column(default=None)
    trial_end: Mapped[datetime | None] = mapped_column(default=None)
    # Skip the period with this index (no invoice, no delivery); set by "skip next cycle".
    skip_period_index: Mapped[int | None] = mapped_column(default=None)
    paused_at: Mapped[datetime | None] = mapped_column(default=None)
    # Cancellation: asked for at ``cancel_requested_at``, effective at ``cancel_at``
    # (the period's end, or at once); ``ended_at`` when it took effect.
    cancel_at_period_end: Mapped[bool] = mapped_column(default=False)
    cancel_at: Mapped[datetime | None] = mapped_column(default=None)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(default=None)
    cancellation_reason: Mapped[str | None] = mapped_column(String(500), default=None)
    # voluntary (the buyer or creator canceled) | involuntary (payment failed for good)
    churn: Mapped[str | None] = mapped_column(String(16), default=None)
    canceled_at: Mapped[datetime | None] = mapped_column(default=None)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    refunded_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    # The plan's retention offer (retention.py): shown in one cancellation and never again
    # once the buyer took it ("accepted") or canceled anyway ("declined").
    retention_offer_outcome: Mapped[str | None] = mapped_column(String(16), default=None)
    retention_offer_at: Mapped[datetime | None] = mapped_column(default=None)
    # A discount taken as a retention offer: this percentage off the next invoices, for
    # this many more of them.
    discount_percent_off: Mapped[int | None] = mapped_column(default=None)
    discount_cycles_remaining: Mapped[int] = mapped_column(default=0)
    # Reminders sent, by key (``trial_will_end:<trial_end>``, ``upcoming:<period>``).
    reminders_sent: Mapped[list[str]] = mapped_column(JSON, default=list)
    # A scheduled price change: these items ([{price, quantity}]) replace the current ones
    # from the first period that starts at or after ``pending_items_at`` (announced ahead).
    pending_items: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    pending_items_at: Mapped[datetime | None] = mapped_column(default=None)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # The creating request's Idempotency-Key (caller-scoped, hashed): a retry after a crash
    # finds this subscription instead of making a second.
    request_key: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    items: Mapped[list[SubscriptionItem]] = relationship(
        order_by="SubscriptionItem.id", lazy="selectin", cascade="all, delete-orphan"
    )


class SubscriptionItem(Base):
    __tablename__ = "subscription_items"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    subscription_id: Mapped[str] = mapped_column(ForeignKey("subscriptions.id"), index=True)
    price_id: Mapped[str] = mapped_column(ForeignKey("prices.id"))
    product_id: Mapped[str] = mapped_column(String(40))
    variant_id: Mapped[str] = mapped_column(String(40))
    sku: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(300))
    quantity: Mapped[int]
    unit_amount: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]


# Renewal invoices waiting for their first charge, which a consolidated charge may gather.
GATHERABLE_SQL = (
    "status = 'open' AND attempt_count = 0 AND billing_reason = 'subscription_cycle' "
    "AND consolidated_charge_id IS NULL"
)


class Invoice(Base):
    """What a customer owes for a period (or a change): ``draft → open → paid | void |
    uncollectible``. A period's invoice is unique by ``period_key``
    (``<subscription>:<period index>``), so a renewal run twice makes it once; its
    payment attempts are keyed ``<invoice>:attempt:<n>`` (ADR 0010)."""

    __tablename__ = "invoices"
    __table_args__ = (
        Index("ix_invoices_creator_subscription", "creator_id", "subscription_id"),
        Index("ix_invoices_creator_customer", "creator_id", "customer_id"),
        # A charge batch counts each buyer's gatherable invoices across creators, by
        # customer (``consolidation._read_gatherable``): without it, PostgreSQL read every
        # invoice with no consolidated charge. Partial, so it stays as small as the set of
        # invoices waiting for their first charge, and is chosen with no statistics too.
        Index(
            "ix_invoices_gatherable_customer",
            "customer_id",
            sqlite_where=text(GATHERABLE_SQL),
            postgresql_where=text(GATHERABLE_SQL),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    subscription_id: Mapped[str] = mapped_column(ForeignKey("subscriptions.id"))
    period_key: Mapped[str | None] = mapped_column(String(60), unique=True, default=None)
    period_index: Mapped[int]
    # subscription_create | subscription_cycle | subscription_update
    billing_reason: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    currency: Mapped[str] = mapped_column(String(3))
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]
    amount_due: Mapped[int] = mapped_column(BigInteger)
    amount_paid: Mapped[int] = mapped_column(BigInteger, default=0)
    attempt_count: Mapped[int] = mapped_column(default=0)
    next_payment_attempt: Mapped[datetime | None] = mapped_column(default=None)
    payment_attempt_id: Mapped[str | None] = mapped_column(
        ForeignKey("payment_attempts.id"), default=None
    )
    order_id: Mapped[str | None] = mapped_column(String(40), default=None)
    # Paid with the buyer's other invoices of the day by one card charge (ADR 0019).
    consolidated_charge_id: Mapped[str | None] = mapped_column(
        ForeignKey("consolidated_charges.id"), default=None, index=True
    )
    # Paid from the buyer's wallet (ADR 0016): the wallet movement, and no charge.
    wallet_transaction_id: Mapped[str | None] = mapped_column(String(40), default=None)
    last_failure: Mapped[str | None] = mapped_column(String(500), default=None)
    paid_at: Mapped[datetime | None] = mapped_column(default=None)
    voided_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    lines: Mapped[list[InvoiceLine]] = relationship(
        order_by="InvoiceLine.id", lazy="selectin", cascade="all, delete-orphan"
    )


class InvoiceLine(Base):
    __tablename__ = "invoice_lines"

    id: Mapped[SerialPK]
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"), index=True)
    price_id: Mapped[str] = mapped_column(String(40))
    product_id: Mapped[str] = mapped_column(String(40))
    variant_id: Mapped[str] = mapped_column(String(40))
    sku: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(300))
    quantity: Mapped[int]
    unit_amount: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]
    is_proration: Mapped[bool] = mapped_column(default=False)


class SubscriptionConsent(Base):
    """What the buyer agreed to at signup, exactly as shown: immutable (only inserted),
    exportable with ``GET /v1/subscriptions/{id}/consent``."""

    __tablename__ = "subscription_consents"
    __table_args__ = (UniqueConstraint("subscription_id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    subscription_id: Mapped[str] = mapped_column(ForeignKey("subscriptions.id"))
    terms: Mapped[str] = mapped_column(Text)
    ip_address: Mapped[str | None] = mapped_column(String(64), default=None)
    user_agent: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[datetime]


class RetentionOffer(Base):
    """What a buyer about to cancel is offered instead, at most one per plan (price):
    ``discount`` (``percent_off`` for ``duration_cycles`` invoices) or ``pause``. Set by
    the creator (``POST /v1/prices/{id}/retention_offer``); shown once, never blocking."""

    __tablename__ = "retention_offers"
    __table_args__ = (UniqueConstraint("price_id", name="uq_retention_offers_price"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    price_id: Mapped[str] = mapped_column(ForeignKey("prices.id"))
    kind: Mapped[str] = mapped_column(String(16))  # discount | pause
    percent_off: Mapped[int | None] = mapped_column(default=None)
    duration_cycles: Mapped[int | None] = mapped_column(default=None)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ConsolidatedCharge(Base):
    """One card charge for several of a buyer's invoices (across creators) that came due
    on the same local day, in one currency (ADR 0019). The buyer's, not a creator's: each
    creator's part is a ``ConsolidatedChargePart``. ``sequence`` counts the buyer's
    consolidated charges of that day and currency (a renewal due later the same day, after
    one was made, starts the next); with the attempt number it makes the gateway key
    ``<buyer>:<day>:<currency>:<sequence>:attempt:<n>``."""

    __tablename__ = "consolidated_charges"
    __table_args__ = (UniqueConstraint("buyer_id", "currency", "charge_day", "sequence"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    buyer_id: Mapped[str] = mapped_column(ForeignKey("buyers.id"), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    # The local date (``YYYY-MM-DD``, the charging customer's zone) the invoices fell due.
    charge_day: Mapped[str] = mapped_column(String(10))
    sequence: Mapped[int]
    amount: Mapped[int] = mapped_column(BigInteger)
    # The payment attempt (purpose ``consolidated_charge``) that charged the card.
    payment_attempt_id: Mapped[str | None] = mapped_column(
        ForeignKey("payment_attempts.id"), default=None
    )
    created_at: Mapped[datetime]

    parts: Mapped[list[ConsolidatedChargePart]] = relationship(
        order_by="ConsolidatedChargePart.invoice_id", lazy="selectin"
    )


class ConsolidatedChargePart(Base):
    """One creator's invoice paid by a consolidated charge, with its exact share of the
    charge: its amount, the platform's fee on it, and its part of the processor's fee
    (estimated before charging and actual after, both split with ``allocation.allocate``).
    With Stripe the part is paid to the creator by a transfer of its own, recorded on the
    invoice's order (``orders.transfer_reference``)."""

    __tablename__ = "consolidated_charge_parts"

    charge_id: Mapped[str] = mapped_column(ForeignKey("consolidated_charges.id"), primary_key=True)
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    platform_fee: Mapped[int] = mapped_column(BigInteger)
    estimated_processor_fee: Mapped[int] = mapped_column(BigInteger)
    # The processor's actual fee allocated to this part (set when the charge succeeds).
    processor_fee: Mapped[int | None] = mapped_column(BigInteger, default=None)
