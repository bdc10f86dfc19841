"""Creating, reading and changing subscriptions (docs/billing.md).

A subscription is created with its first period's invoice in one transaction; the invoice
is charged afterwards in the three steps of a charge (``renewal.charge_invoice``), never
inside this transaction. Every change of status emits its event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from stallholder.accounts import service as accounts
from stallholder.accounts.models import Customer, TestClock
from stallholder.billing import delivery, lifecycle, periods, proration, reminders
from stallholder.billing.kinds import CHARGE_KIND, RENEW_KIND, kind_for
from stallholder.billing.models import (
    Invoice,
    InvoiceLine,
    Subscription,
    SubscriptionConsent,
    SubscriptionItem,
)
from stallholder.billing.periods import Plan
from stallholder.billing.schemas import invoice_out, subscription_out
from stallholder.catalog.models import Price, Product
from stallholder.events import service as events
from stallholder.kit import work
from stallholder.kit.errors import Conflict, InvalidRequest, NotFound
from stallholder.kit.flush import fill_defaults
from stallholder.kit.ids import new_id
from stallholder.kit.pagination import Page, paginate
from stallholder.payments import methods
from stallholder.payments.models import PaymentMethod

MAX_ITEMS = 20


class SubscriptionNotFound(NotFound):
    slug = "subscription-not-found"
    title = "No such subscription"


class InvalidSubscriptionItems(InvalidRequest):
    slug = "invalid-subscription-items"
    title = "The subscription's items cannot be billed together"


class SubscriptionCanceled(Conflict):
    slug = "subscription-canceled"
    title = "The subscription is canceled"


class BillingDayChanged(Conflict):
    slug = "billing-day-changed"
    title = "The first charge date the buyer agreed to no longer holds"


@dataclass(frozen=True, slots=True)
class ItemRequest:
    price_id: str
    quantity: int


@dataclass(frozen=True, slots=True)
class ConsentRequest:
    """What the buyer saw and agreed to, and from where."""

    terms: str
    ip_address: str | None = None
    user_agent: str | None = None


async def customer_zone(session: AsyncSession, *, customer_id: str) -> str:
    customer = await session.get(Customer, customer_id)
    return customer.time_zone if customer is not None else "UTC"


async def billing_now(
    session: AsyncSession, *, test_clock_id: str | None, now: datetime
) -> datetime:
    """The time a customer is billed at: its test clock's frozen time, or ``now``."""
    if test_clock_id is None:
        return now
    clock = await session.get(TestClock, test_clock_id)
    assert clock is not None, test_clock_id
    return clock.frozen_time


@dataclass(frozen=True, slots=True)
class _PricedItem:
    price: Price
    product: Product
    quantity: int


async def priced_items(
    session: AsyncSession, *, creator_id: str, items: Sequence[ItemRequest]
) -> list[_PricedItem]:
    """The items' prices, checked: recurring, active, published, one currency and one
    plan. Raises InvalidSubscriptionItems naming the item at fault."""
    if not 1 <= len(items) <= MAX_ITEMS:
        raise InvalidSubscriptionItems(f"a subscription has 1 to {MAX_ITEMS} items")
    if len({item.price_id for item in items}) != len(items):
        raise InvalidSubscriptionItems("each price may appear once; use quantity instead")
    priced: list[_PricedItem] = []
    for position, item in enumerate(items):
        row = (
            (
                await session.execute(
                    select(Price, Product)
                    .join(Product, Product.id == Price.product_id)
                    .where(Price.id == item.price_id, Price.creator_id == creator_id)
                    .options(joinedload(Product.variants))
                )
            )
            .unique()
            .one_or_none()
        )
        where = f"items[{position}]"
        if row is None:
            raise InvalidSubscriptionItems(f"{where}: no price {item.price_id!r}")
        price, product = row
        if price.type != "recurring" or price.recurring_interval is None:
            raise InvalidSubscriptionItems(
                f"{where}: price {price.id} is not recurring; create a price with "
                "'recurring': {'interval': 'month'}"
            )
        if not price.is_active or product.status != "published":
            raise InvalidSubscriptionItems(
                f"{where}: price {price.id} is archived or its product is not published"
            )
        if not 1 <= item.quantity <= 1000:
            raise InvalidSubscriptionItems(f"{where}: quantity must be 1 to 1000")
        priced.append(_PricedItem(price=price, product=product, quantity=item.quantity))
    first = priced[0].price
    for position, entry in enumerate(priced[1:], start=1):
        price = entry.price
        if price.currency != first.currency:
            raise InvalidSubscriptionItems(
                f"items[{position}]: currency {price.currency} differs from {first.currency}"
            )
        if (price.recurring_interval, price.recurring_interval_count) != (
            first.recurring_interval,
            first.recurring_interval_count,
        ):
            raise InvalidSubscriptionItems(
                f"items[{position}]: price {price.id} bills every "
                f"{price.recurring_interval_count} {price.recurring_interval}, the first item "
                f"every {first.recurring_interval_count} {first.recurring_interval}; one "
                "subscription has one billing cycle"
            )
    return priced


def item_rows(
    priced: Sequence[_PricedItem], *, creator_id: str, now: datetime
) -> list[SubscriptionItem]:
    rows = []
    for entry in priced:
        variant = next(v for v in entry.product.variants if v.is_default)
        assert entry.price.unit_amount is not None
        rows.append(
            SubscriptionItem(
                id=new_id("si"),
                creator_id=creator_id,
                price_id=entry.price.id,
                product_id=entry.product.id,
                variant_id=variant.id,
                sku=variant.sku,
                description=entry.price.nickname or entry.product.name,
                quantity=entry.quantity,
                unit_amount=entry.price.unit_amount,
                created_at=now,
            )
        )
    return rows


async def _payment_method(
    session: AsyncSession, *, creator_id: str, customer_id: str, payment_method_id: str | None
) -> PaymentMethod | None:
    """The named method (the buyer's, granted to this customer), or the customer's
    default; None when nothing is named and there is no default.

    Raises:
        CustomerNotFound, PaymentMethodNotFound, PaymentMethodNotGranted.
    """
    try:
        return await methods.charge_target(
            session,
            creator_id=creator_id,
            customer_id=customer_id,
            payment_method_id=payment_method_id,
        )
    except methods.NoDefaultPaymentMethod:
        return None


async def by_request_key(session: AsyncSession, *, request_key: str) -> Subscription | None:
    return (
        await session.execute(select(Subscription).where(Subscription.request_key == request_key))
    ).scalar_one_or_none()


async def _as_written(session: AsyncSession, row: object, children: Sequence[object]) -> None:
    """Make ``row`` and its ``children`` read as the database will hold them, for an event
    to show: a new one gets its column defaults in memory (``kit.flush.fill_defaults``),
    or, when only the database knows one, is flushed. A row already written shows what it
    holds in memory (this transaction's changes too). Either way the event is written by
    the next flush with the others (a renewal batch's in one statement)."""
    unwritten = [each for each in (row, *children) if each in session.new]
    if unwritten and not fill_defaults(unwritten):
        await session.flush()


async def emit(
    session: AsyncSession, subscription: Subscription, type: str, *, now: datetime
) -> None:
    """Emit a subscription event with the subscription as it is now."""
    await _as_written(session, subscription, subscription.items)
    await events.emit(
        session,
        creator_id=subscription.creator_id,
        type=type,
        now=now,
        data=subscription_out(subscription, now=now).model_dump(mode="json"),
    )


async def emit_invoice(
    session: AsyncSession, invoice: Invoice, type: str, *, now: datetime
) -> None:
    """Emit an invoice event with the invoice as it is now."""
    await _as_written(session, invoice, invoice.lines)
    await events.emit(
        session,
        creator_id=invoice.creator_id,
        type=type,
        now=now,
        data=invoice_out(invoice).model_dump(mode="json"),
    )


def renewal_work(subscription: Subscription) -> work.NewWork:
    """The renewal of the period after the current one, due at its start."""
    following = subscription.current_period_index + 1
    return work.NewWork(
        kind=kind_for(RENEW_KIND, test_clock_id=subscription.test_clock_id),
        payload={"subscription": subscription.id, "period": following},
        due_at=subscription.current_period_end,
        dedupe_key=f"renew:{subscription.id}:{following}",
        creator_id=subscription.creator_id,
    )


async def schedule_renewal(
    session: AsyncSession, subscription: Subscription, *, now: datetime
) -> None:
    """Enqueue the renewal of the period after the current one, due at its start."""
    await work.enqueue_many(session, [renewal_work(subscription)], now=now)


def charge_work(
    invoice: Invoice,
    *,
    test_clock_id: str | None,
    attempt: int,
    due_at: datetime,
    reason: str = "scheduled",
) -> work.NewWork:
    """Attempt ``attempt`` of the invoice's charge, due at ``due_at``."""
    return work.NewWork(
        kind=kind_for(CHARGE_KIND, test_clock_id=test_clock_id),
        payload={"invoice": invoice.id, "attempt": attempt},
        due_at=due_at,
        dedupe_key=f"charge:{invoice.id}:{attempt}:{reason}",
        creator_id=invoice.creator_id,
    )


async def schedule_charge(
    session: AsyncSession,
    invoice: Invoice,
    *,
    test_clock_id: str | None,
    attempt: int,
    due_at: datetime,
    now: datetime,
    reason: str = "scheduled",
) -> None:
    """Enqueue attempt ``attempt`` of the invoice's charge, due at ``due_at``."""
    await work.enqueue_many(
        session,
        [
            charge_work(
                invoice, test_clock_id=test_clock_id, attempt=attempt, due_at=due_at, reason=reason
            )
        ],
        now=now,
    )


def new_invoice(
    subscription: Subscription,
    *,
    period: periods.Period,
    billing_reason: str,
    now: datetime,
) -> Invoice:
    """The open invoice of ``period`` for the subscription's items (not yet added)."""
    lines = [
        InvoiceLine(
            creator_id=subscription.creator_id,
            price_id=item.price_id,
            product_id=item.product_id,
            variant_id=item.variant_id,
            sku=item.sku,
            description=item.description,
            quantity=item.quantity,
            unit_amount=item.unit_amount,
            amount=item.unit_amount * item.quantity,
            period_start=period.start,
            period_end=period.end,
            is_proration=False,
        )
        for item in subscription.items
    ]
    return Invoice(
        id=new_id("in"),
        creator_id=subscription.creator_id,
        customer_id=subscription.customer_id,
        subscription_id=subscription.id,
        period_key=f"{subscription.id}:{period.index}",
        period_index=period.index,
        billing_reason=billing_reason,
        status="open",
        currency=subscription.currency,
        period_start=period.start,
        period_end=period.end,
        amount_due=sum(line.amount for line in lines),
        amount_paid=0,
        attempt_count=0,
        next_payment_attempt=now,
        created_at=now,
        updated_at=now,
        lines=lines,
    )


@dataclass(frozen=True, slots=True)
class Created:
    subscription: Subscription
    invoice: Invoice | None  # the first invoice, to charge now; None during a trial


async def create_subscription(
    session: AsyncSession,
    *,
    creator_id: str,
    customer_id: str,
    items: Sequence[ItemRequest],
    default_payment_method_id: str | None,
    metadata: Mapping[str, str],
    consent: ConsentRequest | None,
    now: datetime,
    trial_days: int | None = None,
    request_key: str | None = None,
    billing_day: int | None = None,
    promised_anchor: datetime | None = None,
) -> Created:
    """A new subscription, at the customer's billing time (its test clock's, if any).

    With a trial (the price's ``trial_days``, or ``trial_days`` given) it is ``trialing``
    and nothing is charged until the trial ends; otherwise it is ``incomplete`` with its
    first invoice open, which the caller charges next (outside this transaction). A
    price's delivery calendar may put the first charge at the next cycle's start. With
    ``billing_day`` (the platform billing day, ADR 0020) a monthly plan with neither trial
    nor delivery calendar is anchored at the next start of that local day of the month,
    and the first invoice is the time until then, prorated by the second.
    ``promised_anchor`` is the anchor a checkout session's renewal terms promised (the
    start of its billing day): the subscription is aligned there or not at all.

    Raises:
        CustomerNotFound, InvalidSubscriptionItems, PaymentMethodNotFound,
        NoDefaultPaymentMethod, BillingDayChanged (``promised_anchor`` is not where the
        billing day falls for this customer now).
    """
    customer = await accounts.get_customer(session, creator_id=creator_id, customer_id=customer_id)
    at = await billing_now(session, test_clock_id=customer.test_clock_id, now=now)
    priced = await priced_items(session, creator_id=creator_id, items=items)
    first = priced[0].price
    assert first.recurring_interval is not None
    plan = Plan(first.recurring_interval, first.recurring_interval_count or 1)  # type: ignore[arg-type]
    trial = (first.trial_days or 0) if trial_days is None else trial_days
    method = await _payment_method(
        session,
        creator_id=creator_id,
        customer_id=customer_id,
        payment_method_id=default_payment_method_id,
    )
    if method is None:
        raise methods.NoDefaultPaymentMethod(
            f"customer {customer_id} has no default payment method to renew with; save one "
            f"with POST /v1/customers/{customer_id}/payment_methods or name one in "
            "default_payment_method"
        )
    zone_name = customer.time_zone
    calendar = calendar_of(first)
    if promised_anchor is not None:
        # The day the checkout session promised, on this customer's calendar.
        billing_day = periods.local_date(promised_anchor, zone_name).day
        if billing_day > 28:
            raise _billing_day_changed(promised_anchor, customer_id, zone_name, None)
    if trial <= 0 and billing_day and calendar is None and plan.interval == "month":
        # The platform billing day (ADR 0020) aligns a plain monthly plan's renewals.
        trial_end = None
        aligned = periods.next_billing_day(at=at, zone_name=zone_name, day_of_month=billing_day)
        if promised_anchor is not None and aligned != promised_anchor:
            raise _billing_day_changed(promised_anchor, customer_id, zone_name, aligned)
        joining = delivery.Joining(anchor=aligned, first_index=0, is_charged_now=aligned == at)
    else:
        starting = delivery.signup(
            calendar,
            plan,
            signup_at=at,
            zone_name=zone_name,
            trial_days=trial,
            amount=sum((item.price.unit_amount or 0) * item.quantity for item in priced),
        )
        joining, trial_end = starting.joining, starting.trial_end
    first_period = periods.period(
        anchor=joining.anchor, zone_name=zone_name, plan=plan, n=joining.first_index
    )
    subscription = Subscription(
        id=new_id("sub"),
        creator_id=creator_id,
        customer_id=customer_id,
        status="incomplete",
        currency=first.currency,
        interval=plan.interval,
        interval_count=plan.count,
        default_payment_method_id=default_payment_method_id,
        time_zone=zone_name,
        test_clock_id=customer.test_clock_id,
        billing_anchor=joining.anchor,
        first_period_index=joining.first_index,
        delivery_calendar=dict(first.delivery_calendar) if first.delivery_calendar else None,
        trial_start=at if trial_end is not None else None,
        trial_end=trial_end,
        reminders_sent=[],
        metadata_=dict(metadata),
        request_key=request_key,
        created_at=at,
        updated_at=at,
        items=item_rows(priced, creator_id=creator_id, now=at),
    )
    invoice: Invoice | None = None
    if joining.is_charged_now:
        # Period ``first_index`` is under way (it may have begun on the calendar's charge
        # day); the buyer pays for it now.
        subscription.current_period_index = first_period.index
        subscription.current_period_start = first_period.start
        subscription.current_period_end = first_period.end
        invoice = new_invoice(
            subscription, period=first_period, billing_reason="subscription_create", now=at
        )
    else:
        # Nothing to pay until the first period starts (the trial's end, or the next
        # cycle): the span until then is "period first_index - 1".
        subscription.current_period_index = first_period.index - 1
        subscription.current_period_start = at
        subscription.current_period_end = first_period.start
        subscription.status = (
            lifecycle.transition("incomplete", "start_trial") if trial_end else "active"
        )
        if billing_day and trial_end is None and subscription.delivery_calendar is None:
            # Aligned to the billing day: the time until then is a prorated first invoice.
            invoice = _until_billing_day(
                subscription, at=at, anchor=joining.anchor, zone_name=zone_name, plan=plan
            )
            if invoice is not None:
                subscription.status = "incomplete"
    session.add(subscription)
    if consent is not None:
        session.add(
            SubscriptionConsent(
                id=new_id("cons"),
                creator_id=creator_id,
                subscription_id=subscription.id,
                terms=consent.terms,
                ip_address=consent.ip_address,
                user_agent=consent.user_agent,
                created_at=at,
            )
        )
    await session.flush()
    await emit(session, subscription, "customer.subscription.created", now=at)
    if invoice is not None:
        session.add(invoice)
        await emit_invoice(session, invoice, "invoice.created", now=at)
        # A safety net: if the request dies before it charges, the worker does.
        await schedule_charge(
            session,
            invoice,
            test_clock_id=subscription.test_clock_id,
            attempt=1,
            due_at=at,
            now=at,
        )
    await schedule_renewal(session, subscription, now=at)
    await reminders.schedule(session, subscription, now=at)
    return Created(subscription=subscription, invoice=invoice)


def _until_billing_day(
    subscription: Subscription, *, at: datetime, anchor: datetime, zone_name: str, plan: Plan
) -> Invoice | None:
    """The first invoice of a subscription aligned to the billing day: ``[at, anchor)``,
    each line's unit amount prorated by the second over the full period that ends at
    ``anchor`` (rounded down, as every proration); None when that comes to nothing."""
    full_start = periods.boundary(anchor=anchor, zone_name=zone_name, plan=plan, n=-1)
    invoice = new_invoice(
        subscription,
        period=periods.Period(index=-1, start=at, end=anchor),
        billing_reason="subscription_create",
        now=at,
    )
    for line in invoice.lines:
        # By the unit, so the line is still its unit amount × its quantity (as its order's).
        line.unit_amount = _prorated_unit(
            line.unit_amount, full_start=full_start, anchor=anchor, at=at
        )
        line.amount = line.unit_amount * line.quantity
        line.is_proration = True
    invoice.amount_due = sum(line.amount for line in invoice.lines)
    return invoice if invoice.amount_due > 0 else None


def _billing_day_changed(
    promised: datetime, customer_id: str, zone_name: str, aligned: datetime | None
) -> BillingDayChanged:
    falls = (
        "is not a day every month has" if aligned is None else f"now falls at {aligned.isoformat()}"
    )
    return BillingDayChanged(
        f"the renewal terms promised the first full charge at {promised.isoformat()}, but "
        f"for customer {customer_id} (zone {zone_name}) the billing day {falls}; open a new "
        "checkout session"
    )


def _prorated_unit(
    unit_amount: int, *, full_start: datetime, anchor: datetime, at: datetime
) -> int:
    return proration.prorate_change(
        period_start=full_start, period_end=anchor, at=at, old_amount=0, new_amount=unit_amount
    ).charge


@dataclass(frozen=True, slots=True)
class BillingDayQuote:
    """What subscribing at ``at`` on the platform billing day costs: the anchor (the start
    of the next billing day in the zone) and the first invoice's prorated amount."""

    anchor: datetime
    amount: int


def quote_billing_day(
    *,
    billing_day: int,
    plan: Plan,
    trial_days: int,
    has_delivery_calendar: bool,
    lines: Sequence[tuple[int, int]],
    zone_name: str,
    at: datetime,
) -> BillingDayQuote | None:
    """The billing day's first charge for ``lines`` ((unit amount, quantity) each) as
    ``create_subscription`` will make it when the subscription begins at ``at``; None when
    the billing day does not apply (a trial, a delivery calendar, not monthly, or ``at`` is
    the anchor itself). Pure."""
    if trial_days > 0 or has_delivery_calendar or plan.interval != "month":
        return None
    anchor = periods.next_billing_day(at=at, zone_name=zone_name, day_of_month=billing_day)
    if anchor == at:
        return None
    full_start = periods.boundary(anchor=anchor, zone_name=zone_name, plan=plan, n=-1)
    amount = sum(
        _prorated_unit(unit, full_start=full_start, anchor=anchor, at=at) * quantity
        for unit, quantity in lines
    )
    return BillingDayQuote(anchor=anchor, amount=amount)


def calendar_of(price: Price) -> delivery.DeliveryCalendar | None:
    """The price's delivery calendar, if it has one."""
    if price.delivery_calendar is None:
        return None
    return delivery.DeliveryCalendar(**price.delivery_calendar)


async def get_subscription(
    session: AsyncSession, *, creator_id: str, subscription_id: str, for_update: bool = False
) -> Subscription:
    """Raises SubscriptionNotFound, for another creator's subscription too."""
    statement = select(Subscription).where(Subscription.id == subscription_id)
    if for_update:
        statement = statement.with_for_update()
    subscription = (await session.execute(statement)).scalar_one_or_none()
    if subscription is None or subscription.creator_id != creator_id:
        raise SubscriptionNotFound(f"no subscription {subscription_id!r}")
    return subscription


async def list_subscriptions(
    session: AsyncSession,
    *,
    creator_id: str,
    customer_id: str | None,
    status: str | None,
    limit: int,
    starting_after: str | None,
) -> Page[Subscription]:
    statement = select(Subscription).where(Subscription.creator_id == creator_id)
    if customer_id is not None:
        statement = statement.where(Subscription.customer_id == customer_id)
    if status is not None:
        statement = statement.where(Subscription.status == status)
    return await paginate(
        session, statement, id_column=Subscription.id, limit=limit, starting_after=starting_after
    )


async def open_invoice(session: AsyncSession, *, subscription_id: str) -> Invoice | None:
    """The subscription's oldest open invoice (one that is waiting for payment)."""
    return (
        await session.execute(
            select(Invoice)
            .where(Invoice.subscription_id == subscription_id, Invoice.status == "open")
            .order_by(Invoice.period_index, Invoice.id)
            .limit(1)
        )
    ).scalar_one_or_none()


async def update_subscription(
    session: AsyncSession,
    *,
    creator_id: str,
    subscription_id: str,
    now: datetime,
    default_payment_method_id: str | None = None,
    items: Sequence[ItemRequest] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Subscription:
    """Change the default payment method, the items (from the next period on; see
    ``preview`` for a change now with proration) or the metadata (merged; a key set to
    an empty string is removed), as Stripe's update does.

    A new payment method on a subscription whose invoice failed retries it at once.

    Raises:
        SubscriptionNotFound, SubscriptionCanceled, PaymentMethodNotFound,
        PaymentMethodNotGranted, InvalidSubscriptionItems.
    """
    subscription = await get_subscription(
        session, creator_id=creator_id, subscription_id=subscription_id, for_update=True
    )
    if subscription.status == "canceled":
        raise SubscriptionCanceled(f"subscription {subscription_id} is canceled; start a new one")
    at = await billing_now(session, test_clock_id=subscription.test_clock_id, now=now)
    if default_payment_method_id is not None:
        await methods.charge_target(
            session,
            creator_id=creator_id,
            customer_id=subscription.customer_id,
            payment_method_id=default_payment_method_id,
        )
        is_new = default_payment_method_id != subscription.default_payment_method_id
        subscription.default_payment_method_id = default_payment_method_id
        unpaid = await open_invoice(session, subscription_id=subscription.id)
        if is_new and unpaid is not None and unpaid.attempt_count > 0:
            await schedule_charge(
                session,
                unpaid,
                test_clock_id=subscription.test_clock_id,
                attempt=unpaid.attempt_count + 1,
                due_at=at,
                now=at,
                reason=f"new_method:{default_payment_method_id}",
            )
            unpaid.next_payment_attempt = at
    if items is not None:
        priced = await priced_items(session, creator_id=creator_id, items=items)
        first = priced[0].price
        if (first.currency, first.recurring_interval, first.recurring_interval_count or 1) != (
            subscription.currency,
            subscription.interval,
            subscription.interval_count,
        ):
            raise InvalidSubscriptionItems(
                "the new items must bill in the subscription's currency and cycle "
                f"({subscription.currency}, every {subscription.interval_count} "
                f"{subscription.interval}); start a new subscription for another cycle"
            )
        subscription.items = item_rows(priced, creator_id=creator_id, now=at)
    if metadata is not None:
        merged = dict(subscription.metadata_)
        for key, value in metadata.items():
            if value == "":
                merged.pop(key, None)
            else:
                merged[key] = value
        subscription.metadata_ = merged
    subscription.updated_at = at
    await emit(session, subscription, "customer.subscription.updated", now=at)
    return subscription


class PriceChangeTooSoon(InvalidRequest):
    slug = "price-change-too-soon"
    title = "A price change must be announced further ahead"


async def schedule_price_change(
    session: AsyncSession,
    *,
    creator_id: str,
    subscription_id: str,
    items: Sequence[ItemRequest],
    effective_at: datetime,
    notice_days: int,
    now: datetime,
) -> Subscription:
    """Replace the items from the first period starting at or after ``effective_at``. The
    buyer is told 30 days ahead (at once when it is sooner); a change less than
    ``notice_days`` ahead is refused, as automatic-renewal laws ask.

    Raises:
        SubscriptionNotFound, SubscriptionCanceled, InvalidSubscriptionItems,
        PriceChangeTooSoon.
    """
    subscription = await get_subscription(
        session, creator_id=creator_id, subscription_id=subscription_id, for_update=True
    )
    if subscription.status == "canceled":
        raise SubscriptionCanceled(f"subscription {subscription_id} is canceled")
    at = await billing_now(session, test_clock_id=subscription.test_clock_id, now=now)
    earliest = at + timedelta(days=notice_days)
    if effective_at < earliest:
        raise PriceChangeTooSoon(
            f"effective_at must be at least {notice_days} days from now (on or after "
            f"{earliest.isoformat()}) so the buyer is told in time",
            earliest=earliest.isoformat(),
        )
    priced = await priced_items(session, creator_id=creator_id, items=items)
    first = priced[0].price
    if (first.currency, first.recurring_interval, first.recurring_interval_count or 1) != (
        subscription.currency,
        subscription.interval,
        subscription.interval_count,
    ):
        raise InvalidSubscriptionItems(
            "the new items must bill in the subscription's currency and cycle"
        )
    subscription.pending_items = [
        {"price": item.price_id, "quantity": item.quantity} for item in items
    ]
    subscription.pending_items_at = effective_at
    subscription.updated_at = at
    await emit(session, subscription, "customer.subscription.updated", now=at)
    await reminders.schedule(session, subscription, now=at)
    return subscription


async def apply_pending_items(
    session: AsyncSession, subscription: Subscription, *, period_start: datetime
) -> None:
    """Put a scheduled price change into effect for a period starting at ``period_start``
    (or later); a price that has since become unusable keeps the current items."""
    if subscription.pending_items_at is None or subscription.pending_items is None:
        return
    if period_start < subscription.pending_items_at:
        return
    requested = [
        ItemRequest(str(item["price"]), int(item["quantity"]))
        for item in subscription.pending_items
    ]
    subscription.pending_items = None
    subscription.pending_items_at = None
    try:
        priced = await priced_items(session, creator_id=subscription.creator_id, items=requested)
    except InvalidSubscriptionItems:
        return
    subscription.items = item_rows(priced, creator_id=subscription.creator_id, now=period_start)
    await session.flush()


async def get_consent(
    session: AsyncSession, *, creator_id: str, subscription_id: str
) -> SubscriptionConsent | None:
    await get_subscription(session, creator_id=creator_id, subscription_id=subscription_id)
    return (
        await session.execute(
            select(SubscriptionConsent).where(
                SubscriptionConsent.subscription_id == subscription_id
            )
        )
    ).scalar_one_or_none()
