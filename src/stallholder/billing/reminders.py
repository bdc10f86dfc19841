"""Reminders and buyer emails of subscriptions (docs/billing.md).

Reminders are due work (``billing.remind``) enqueued whenever a period or trial begins,
each keyed by what it is about, so it is sent once:

- before a trial ends: 3 days before (7 for trials longer than 31 days), with the event
  ``customer.subscription.trial_will_end``;
- before a yearly renewal: 30 days before, with ``invoice.upcoming``;
- monthly plans: once a year, 7 days before each anniversary renewal, with
  ``invoice.upcoming``.

A reminder that comes due after its subject changed (the trial was ended, the
subscription canceled or paused) is dropped. Dates in emails are the buyer's local dates.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts.models import Creator, Customer
from stallholder.billing import periods
from stallholder.billing.kinds import REMIND_KIND, kind_for
from stallholder.billing.models import Invoice, Subscription
from stallholder.billing.schemas import amount_of, subscription_out
from stallholder.catalog.models import Price
from stallholder.events import service as events
from stallholder.kit import work
from stallholder.notifications import service as notifications
from stallholder.notifications.rendering import format_money

TRIAL_NOTICE = timedelta(days=3)
LONG_TRIAL_NOTICE = timedelta(days=7)
LONG_TRIAL = timedelta(days=31)
YEARLY_NOTICE = timedelta(days=30)
MONTHLY_ANNIVERSARY_NOTICE = timedelta(days=7)
PRICE_CHANGE_NOTICE = timedelta(days=30)


def due_reminders(subscription: Subscription) -> list[tuple[str, str, datetime]]:
    """The reminders the current state calls for: (key, type, due time)."""
    found: list[tuple[str, str, datetime]] = []
    if subscription.status == "trialing" and subscription.trial_end is not None:
        assert subscription.trial_start is not None
        length = subscription.trial_end - subscription.trial_start
        notice = LONG_TRIAL_NOTICE if length > LONG_TRIAL else TRIAL_NOTICE
        found.append(
            (
                f"trial_will_end:{subscription.trial_end.isoformat()}",
                "trial_will_end",
                max(subscription.trial_start, subscription.trial_end - notice),
            )
        )
    if subscription.pending_items_at is not None:
        found.append(
            (
                f"price_change:{subscription.pending_items_at.isoformat()}",
                "price_change",
                max(
                    subscription.updated_at,
                    subscription.pending_items_at - PRICE_CHANGE_NOTICE,
                ),
            )
        )
    following = subscription.current_period_index + 1
    renewal = subscription.current_period_end
    if subscription.interval == "year":
        found.append(
            (
                f"upcoming:{following}",
                "upcoming",
                max(subscription.current_period_start, renewal - YEARLY_NOTICE),
            )
        )
    elif (
        subscription.interval == "month"
        and subscription.interval_count == 1
        and following > 0
        and following % 12 == 0
    ):
        found.append(
            (
                f"upcoming:{following}",
                "upcoming",
                max(subscription.current_period_start, renewal - MONTHLY_ANNIVERSARY_NOTICE),
            )
        )
    return found


def reminder_work(subscription: Subscription) -> list[work.NewWork]:
    """The reminders the subscription's current period or trial calls for."""
    return [
        work.NewWork(
            kind=kind_for(REMIND_KIND, test_clock_id=subscription.test_clock_id),
            payload={"subscription": subscription.id, "key": key, "reminder": reminder},
            due_at=due_at,
            dedupe_key=f"remind:{subscription.id}:{key}",
            creator_id=subscription.creator_id,
        )
        for key, reminder, due_at in due_reminders(subscription)
    ]


async def schedule(session: AsyncSession, subscription: Subscription, *, now: datetime) -> None:
    """Enqueue the reminders the subscription's current period or trial calls for."""
    await work.enqueue_many(session, reminder_work(subscription), now=now)


async def _people(session: AsyncSession, subscription: Subscription) -> tuple[Creator, Customer]:
    creator = await session.get(Creator, subscription.creator_id)
    customer = await session.get(Customer, subscription.customer_id)
    assert creator is not None
    assert customer is not None
    return creator, customer


async def _pending_amount(session: AsyncSession, subscription: Subscription) -> int:
    """What a period costs at the scheduled new prices."""
    total = 0
    for item in subscription.pending_items or []:
        price = await session.get(Price, str(item["price"]))
        if price is not None and price.unit_amount is not None:
            total += price.unit_amount * int(item["quantity"])
    return total


def _local(instant: datetime, customer: Customer) -> date:
    return periods.local_date(instant, customer.time_zone)


async def send_reminder(
    session: AsyncSession, *, subscription_id: str, key: str, reminder: str, now: datetime
) -> bool:
    """Send a due reminder once, if it still applies; True when sent."""
    subscription = await session.get(Subscription, subscription_id, with_for_update=True)
    if subscription is None or key in subscription.reminders_sent:
        return False
    if key not in {found[0] for found in due_reminders(subscription)}:
        return False  # the trial ended, the period moved on, the subscription ended …
    if subscription.cancel_at is not None or subscription.status == "canceled":
        return False
    if subscription.status == "paused" and reminder != "price_change":
        return False
    creator, customer = await _people(session, subscription)
    renewal = subscription.trial_end if reminder == "trial_will_end" else None
    charge_at = renewal or subscription.current_period_end
    if reminder == "price_change":
        assert subscription.pending_items_at is not None
        new_amount = await _pending_amount(session, subscription)
        headline = f"The price of your {creator.display_name} subscription is changing"
        body = (
            f"From the first renewal on or after "
            f"{_local(subscription.pending_items_at, customer):%d %B %Y} your subscription "
            f"costs {format_money(new_amount, subscription.currency)} instead of "
            f"{format_money(amount_of(subscription), subscription.currency)}. You can cancel "
            "before then and pay nothing more."
        )
        event_type = "customer.subscription.updated"
        data = subscription_out(subscription, now=now).model_dump(mode="json")
    elif reminder == "trial_will_end":
        headline = (
            f"Your {creator.display_name} trial ends on {_local(charge_at, customer):%d %B %Y}"
        )
        body = "Your free trial is ending. Unless you cancel, your subscription starts then."
        event_type = "customer.subscription.trial_will_end"
        data = subscription_out(subscription, now=now).model_dump(mode="json")
    else:
        headline = f"Your {creator.display_name} subscription renews soon"
        body = "This is your reminder that your subscription renews automatically."
        event_type = "invoice.upcoming"
        data = {
            "object": "invoice",
            "subscription": subscription.id,
            "customer": subscription.customer_id,
            "amount_due": amount_of(subscription),
            "currency": subscription.currency,
            "period_start": subscription.current_period_end.isoformat(),
            "next_payment_attempt": subscription.current_period_end.isoformat(),
        }
    await events.emit(
        session, creator_id=subscription.creator_id, type=event_type, data=data, now=now
    )
    await notifications.queue_email(
        session,
        creator_id=subscription.creator_id,
        kind="subscription_reminder",
        to=customer.email,
        dedupe_key=f"remind:{subscription.id}:{key}",
        now=now,
        context={
            "merchant": creator.display_name,
            "headline": headline,
            "body": body,
            "amount": amount_of(subscription),
            "currency": subscription.currency,
            "interval": subscription.interval,
            "interval_count": subscription.interval_count,
            "charge_date": _local(charge_at, customer),
            "manage_url": "",
            "subscription_id": subscription.id,
        },
    )
    subscription.reminders_sent = [*subscription.reminders_sent, key]
    await session.flush()
    return True


async def payment_failed_email(
    session: AsyncSession,
    *,
    invoice: Invoice,
    subscription: Subscription,
    message: str,
    update_url_template: str,
    at: datetime,
) -> None:
    """One email per failed attempt, with when it is tried again (the buyer's date)."""
    creator, customer = await _people(session, subscription)
    update_url = (
        update_url_template.format(
            invoice=invoice.id, customer=customer.id, subscription=subscription.id
        )
        if update_url_template
        else ""
    )
    await notifications.queue_email(
        session,
        creator_id=invoice.creator_id,
        kind="invoice_payment_failed",
        to=customer.email,
        dedupe_key=f"invoice_failed:{invoice.id}:{invoice.attempt_count}",
        now=at,
        context={
            "merchant": creator.display_name,
            "amount": invoice.amount_due,
            "currency": invoice.currency,
            "period_start": _local(invoice.period_start, customer),
            "period_end": _local(invoice.period_end, customer),
            "failure_message": message,
            "next_attempt": _local(invoice.next_payment_attempt, customer)
            if invoice.next_payment_attempt
            else None,
            "is_canceled": subscription.status == "canceled",
            "update_url": update_url,
            "invoice_id": invoice.id,
        },
    )


async def cancellation_receipt(
    session: AsyncSession, *, subscription: Subscription, at: datetime
) -> None:
    """The buyer's cancellation receipt: when it was asked, what ends when, any refund."""
    creator, customer = await _people(session, subscription)
    assert subscription.cancel_requested_at is not None
    ends_at = subscription.cancel_at if subscription.cancel_at_period_end else None
    # Each cancellation asked for (one may be undone and asked for again) gets its receipt.
    number = 1 + sum(1 for key in subscription.reminders_sent if key.startswith("canceled:"))
    key = f"canceled:{number}"
    subscription.reminders_sent = [*subscription.reminders_sent, key]
    await notifications.queue_email(
        session,
        creator_id=subscription.creator_id,
        kind="subscription_canceled",
        to=customer.email,
        dedupe_key=f"{subscription.id}:{key}",
        now=at,
        context={
            "merchant": creator.display_name,
            "requested_on": _local(subscription.cancel_requested_at, customer),
            "reason": subscription.cancellation_reason,
            "ends_on": _local(ends_at, customer) if ends_at else None,
            "refunded_amount": subscription.refunded_amount,
            "currency": subscription.currency,
            "subscription_id": subscription.id,
        },
    )
