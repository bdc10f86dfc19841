"""API input and output of subscriptions, invoices and test clocks."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    Field,
    StrictBool,
    StrictInt,
    model_validator,
)

from stallholder.accounts.models import TestClock
from stallholder.billing import delivery, discounts
from stallholder.billing.models import (
    Invoice,
    RetentionOffer,
    Subscription,
    SubscriptionConsent,
)
from stallholder.billing.periods import Plan
from stallholder.kit.schemas import Input, Output

MetadataValue = Annotated[str, Field(max_length=500)]
Metadata = Annotated[
    dict[Annotated[str, Field(min_length=1, max_length=40)], MetadataValue], Field(max_length=50)
]


def plan_of(subscription: Subscription) -> Plan:
    return Plan(subscription.interval, subscription.interval_count)  # type: ignore[arg-type]


def calendar_of(subscription: Subscription) -> delivery.DeliveryCalendar | None:
    """The delivery calendar the subscription was sold with, if any."""
    if subscription.delivery_calendar is None:
        return None
    return delivery.DeliveryCalendar(**subscription.delivery_calendar)


def amount_of(subscription: Subscription) -> int:
    """What one period costs: the sum of its items."""
    return sum(item.unit_amount * item.quantity for item in subscription.items)


class ItemIn(Input):
    price: str = Field(min_length=1, max_length=40)
    quantity: StrictInt = Field(default=1, ge=1, le=1000)


class ConsentIn(Input):
    """The renewal terms exactly as the buyer saw them when agreeing, and from where."""

    terms: str = Field(min_length=1, max_length=5000)
    ip_address: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=500)


class SubscriptionCreate(Input):
    customer: str = Field(min_length=1, max_length=40)
    items: list[ItemIn] = Field(min_length=1, max_length=20)
    default_payment_method: str | None = Field(default=None, max_length=40)
    trial_period_days: StrictInt | None = Field(default=None, ge=0, le=730)
    metadata: Metadata = Field(default_factory=dict)
    consent: ConsentIn | None = None


class SubscriptionUpdate(Input):
    default_payment_method: str | None = Field(default=None, max_length=40)
    items: list[ItemIn] | None = Field(default=None, min_length=1, max_length=20)
    metadata: Metadata | None = None
    # none: new items from the next period on; create_prorations: now, prorated.
    proration_behavior: Literal["none", "create_prorations"] = "none"


class CancelIn(Input):
    at_period_end: StrictBool = True
    reason: str | None = Field(default=None, max_length=500)


class PreviewIn(Input):
    items: list[ItemIn] = Field(min_length=1, max_length=20)
    # now: prorate today; next_period: the new items start at the next renewal.
    proration_date: AwareDatetime | None = None


def _within_clock_range(value: datetime) -> datetime:
    if not CLOCK_EARLIEST <= value.astimezone(UTC) < CLOCK_LATEST:
        raise ValueError("a test clock's time must be in the years 2000 to 2099")
    return value


# Test clocks live in years any zone's calendar can reach both sides of.
CLOCK_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
CLOCK_LATEST = datetime(2100, 1, 1, tzinfo=UTC)
ClockTime = Annotated[AwareDatetime, AfterValidator(_within_clock_range)]


class TestClockCreate(Input):
    __test__ = False
    frozen_time: ClockTime
    name: str | None = Field(default=None, max_length=200)


class TestClockAdvance(Input):
    __test__ = False
    frozen_time: ClockTime


class ItemOut(BaseModel):
    object: Literal["subscription_item"] = "subscription_item"
    id: str
    price: str
    quantity: int
    unit_amount: int
    description: str


class CycleOut(BaseModel):
    """One cycle as the buyer sees it (dates in the customer's zone for ``ships_on``)."""

    charge_date: datetime
    amount: int
    cutoff: datetime
    ships_on: date


class PendingUpdateOut(BaseModel):
    """A scheduled price change: these items from the first period starting at or after
    ``effective_at``."""

    effective_at: datetime
    items: list[dict[str, Any]]


class PriceChangeIn(Input):
    items: list[ItemIn] = Field(min_length=1, max_length=20)
    effective_at: AwareDatetime


class DiscountOut(BaseModel):
    """A retention discount the buyer took: ``percent_off`` off the next
    ``cycles_remaining`` invoices."""

    percent_off: int
    cycles_remaining: int


class RetentionOutcomeOut(BaseModel):
    """The plan's retention offer was shown in a cancellation and ``accepted`` or
    ``declined`` (it is not offered again)."""

    outcome: Literal["accepted", "declined"]
    at: datetime


class RetentionOfferIn(Input):
    """A plan's retention offer: ``discount`` needs ``percent_off`` (1–100) and
    ``duration_cycles`` (1–24 invoices); ``pause`` takes neither."""

    kind: Literal["discount", "pause"]
    percent_off: StrictInt | None = Field(default=None, ge=1, le=100)
    duration_cycles: StrictInt | None = Field(default=None, ge=1, le=24)

    @model_validator(mode="after")
    def _fits_the_kind(self) -> RetentionOfferIn:
        if self.kind == "discount" and (self.percent_off is None or self.duration_cycles is None):
            raise ValueError("a discount offer needs percent_off and duration_cycles")
        if self.kind == "pause" and (
            self.percent_off is not None or self.duration_cycles is not None
        ):
            raise ValueError("a pause offer takes no percent_off or duration_cycles")
        return self


class RetentionOfferOut(Output):
    object: Literal["retention_offer"] = "retention_offer"
    id: str
    price: str
    kind: str
    percent_off: int | None
    duration_cycles: int | None
    # The offer in plain words, as the buyer's confirmation page shows it.
    description: str
    created: datetime
    updated: datetime


def retention_offer_out(offer: RetentionOffer, *, description: str) -> RetentionOfferOut:
    return RetentionOfferOut(
        id=offer.id,
        price=offer.price_id,
        kind=offer.kind,
        percent_off=offer.percent_off,
        duration_cycles=offer.duration_cycles,
        description=description,
        created=offer.created_at,
        updated=offer.updated_at,
    )


class CancellationOut(BaseModel):
    requested_at: datetime | None
    effective_at: datetime | None
    reason: str | None
    churn: str | None
    refunded_amount: int


class SubscriptionOut(Output):
    object: Literal["subscription"] = "subscription"
    id: str
    customer: str
    status: str
    currency: str
    interval: str
    interval_count: int
    items: list[ItemOut]
    amount: int
    default_payment_method: str | None
    time_zone: str
    billing_cycle_anchor: datetime
    current_period_start: datetime
    current_period_end: datetime
    trial_start: datetime | None
    trial_end: datetime | None
    cancel_at_period_end: bool
    cancel_at: datetime | None
    canceled_at: datetime | None
    ended_at: datetime | None
    paused_at: datetime | None
    skipped_cycle_charge_date: datetime | None
    current_cycle: CycleOut | None
    next_cycle: CycleOut | None
    cancellation: CancellationOut | None
    pending_update: PendingUpdateOut | None
    discount: DiscountOut | None
    retention_offer: RetentionOutcomeOut | None
    test_clock: str | None
    metadata: dict[str, str]
    created: datetime


def _cycle(subscription: Subscription, index: int, *, amount: int) -> CycleOut:
    found = delivery.cycle(
        calendar_of(subscription),
        plan_of(subscription),
        anchor=subscription.billing_anchor,
        zone_name=subscription.time_zone,
        n=index,
        amount=amount,
    )
    return CycleOut(
        charge_date=found.charge_at,
        amount=found.amount,
        cutoff=found.cutoff_at,
        ships_on=found.ships_on,
    )


def subscription_out(subscription: Subscription, *, now: datetime) -> SubscriptionOut:
    """The subscription with its current and next cycle: the next one's amount is 0 when
    it is skipped or falls in a pause, and there is none once it is canceling or ended."""
    amount = amount_of(subscription)
    index = subscription.current_period_index
    is_ending = subscription.status == "canceled" or (
        subscription.cancel_at is not None
        and subscription.cancel_at <= subscription.current_period_end
    )
    following = index + 1
    next_amount = (
        0
        if subscription.skip_period_index == following or subscription.status == "paused"
        else discounts.discounted_total(subscription)
    )
    skipped_at = (
        _cycle(subscription, subscription.skip_period_index, amount=0).charge_date
        if subscription.skip_period_index is not None
        else None
    )
    cancellation = (
        CancellationOut(
            requested_at=subscription.cancel_requested_at,
            effective_at=subscription.cancel_at,
            reason=subscription.cancellation_reason,
            churn=subscription.churn,
            refunded_amount=subscription.refunded_amount,
        )
        if subscription.cancel_at is not None or subscription.churn is not None
        else None
    )
    return SubscriptionOut(
        id=subscription.id,
        customer=subscription.customer_id,
        status=subscription.status,
        currency=subscription.currency,
        interval=subscription.interval,
        interval_count=subscription.interval_count,
        items=[
            ItemOut(
                id=item.id,
                price=item.price_id,
                quantity=item.quantity,
                unit_amount=item.unit_amount,
                description=item.description,
            )
            for item in subscription.items
        ],
        amount=amount,
        default_payment_method=subscription.default_payment_method_id,
        time_zone=subscription.time_zone,
        billing_cycle_anchor=subscription.billing_anchor,
        current_period_start=subscription.current_period_start,
        current_period_end=subscription.current_period_end,
        trial_start=subscription.trial_start,
        trial_end=subscription.trial_end,
        cancel_at_period_end=subscription.cancel_at_period_end,
        cancel_at=subscription.cancel_at,
        canceled_at=subscription.canceled_at,
        ended_at=subscription.ended_at,
        paused_at=subscription.paused_at,
        skipped_cycle_charge_date=skipped_at,
        current_cycle=_cycle(subscription, index, amount=amount)
        if index >= subscription.first_period_index
        else None,
        next_cycle=None if is_ending else _cycle(subscription, following, amount=next_amount),
        cancellation=cancellation,
        pending_update=PendingUpdateOut(
            effective_at=subscription.pending_items_at, items=list(subscription.pending_items)
        )
        if subscription.pending_items_at is not None and subscription.pending_items is not None
        else None,
        discount=DiscountOut(
            percent_off=subscription.discount_percent_off,
            cycles_remaining=subscription.discount_cycles_remaining,
        )
        if subscription.discount_percent_off is not None
        and subscription.discount_cycles_remaining > 0
        else None,
        retention_offer=RetentionOutcomeOut(
            outcome=subscription.retention_offer_outcome,
            at=subscription.retention_offer_at,
        )
        if subscription.retention_offer_outcome is not None
        and subscription.retention_offer_at is not None
        else None,
        test_clock=subscription.test_clock_id,
        metadata=dict(subscription.metadata_),
        created=subscription.created_at,
    )


class InvoiceLineOut(BaseModel):
    object: Literal["line_item"] = "line_item"
    price: str
    description: str
    quantity: int
    unit_amount: int
    amount: int
    period_start: datetime
    period_end: datetime
    proration: bool


class InvoiceOut(Output):
    object: Literal["invoice"] = "invoice"
    id: str
    customer: str
    subscription: str
    status: str
    billing_reason: str
    currency: str
    period_start: datetime
    period_end: datetime
    amount_due: int
    amount_paid: int
    amount_remaining: int
    attempt_count: int
    next_payment_attempt: datetime | None
    last_payment_error: str | None
    charge: str | None
    # The consolidated charge (``cc_…``) that paid it with the buyer's other invoices of
    # the day, when one did; ``charge`` is then that charge's payment attempt.
    consolidated_charge: str | None = None
    order: str | None
    # The wallet movement that paid it, when the buyer's wallet did (no charge then).
    wallet_transaction: str | None
    lines: list[InvoiceLineOut]
    paid_at: datetime | None
    created: datetime


def invoice_out(invoice: Invoice) -> InvoiceOut:
    return InvoiceOut(
        id=invoice.id,
        customer=invoice.customer_id,
        subscription=invoice.subscription_id,
        status=invoice.status,
        billing_reason=invoice.billing_reason,
        currency=invoice.currency,
        period_start=invoice.period_start,
        period_end=invoice.period_end,
        amount_due=invoice.amount_due,
        amount_paid=invoice.amount_paid,
        amount_remaining=invoice.amount_due - invoice.amount_paid
        if invoice.status in ("draft", "open")
        else 0,
        attempt_count=invoice.attempt_count,
        next_payment_attempt=invoice.next_payment_attempt,
        last_payment_error=invoice.last_failure,
        charge=invoice.payment_attempt_id,
        consolidated_charge=invoice.consolidated_charge_id,
        order=invoice.order_id,
        wallet_transaction=invoice.wallet_transaction_id,
        lines=[
            InvoiceLineOut(
                price=line.price_id,
                description=line.description,
                quantity=line.quantity,
                unit_amount=line.unit_amount,
                amount=line.amount,
                period_start=line.period_start,
                period_end=line.period_end,
                proration=line.is_proration,
            )
            for line in invoice.lines
        ],
        paid_at=invoice.paid_at,
        created=invoice.created_at,
    )


class ConsentOut(Output):
    object: Literal["subscription_consent"] = "subscription_consent"
    id: str
    subscription: str
    terms: str
    ip_address: str | None
    user_agent: str | None
    created: datetime


def consent_out(consent: SubscriptionConsent) -> ConsentOut:
    return ConsentOut(
        id=consent.id,
        subscription=consent.subscription_id,
        terms=consent.terms,
        ip_address=consent.ip_address,
        user_agent=consent.user_agent,
        created=consent.created_at,
    )


class TestClockOut(Output):
    __test__ = False
    object: Literal["test_helpers.test_clock"] = "test_helpers.test_clock"
    id: str
    name: str | None
    frozen_time: datetime
    status: str
    is_platform_wide: bool
    created: datetime


def test_clock_out(clock: TestClock) -> TestClockOut:
    return TestClockOut(
        id=clock.id,
        name=clock.name,
        frozen_time=clock.frozen_time,
        status=clock.status,
        is_platform_wide=clock.creator_id is None,
        created=clock.created_at,
    )


test_clock_out.__test__ = False  # type: ignore[attr-defined]
