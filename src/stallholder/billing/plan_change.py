"""Changing a subscription's items now, with proration (the "now" of the preview).

The rest of the current period is charged at the new amount and credited at the old one,
by the second (``proration``). A net amount due is a ``subscription_update`` invoice,
charged at once like any invoice; a net credit is refunded from the latest payment for
the current period (rounded down, never more than that payment). Changing from the next
period on is ``subscriptions.update_subscription`` (no proration).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.billing import proration
from stallholder.billing.models import Invoice, InvoiceLine, Subscription, SubscriptionItem
from stallholder.billing.schemas import amount_of
from stallholder.billing.subscriptions import (
    InvalidSubscriptionItems,
    ItemRequest,
    SubscriptionCanceled,
    billing_now,
    emit,
    emit_invoice,
    get_subscription,
    item_rows,
    priced_items,
    schedule_charge,
)
from stallholder.kit.ids import new_id


@dataclass(frozen=True, slots=True)
class PlanChange:
    subscription: Subscription
    proration: proration.Proration | None
    invoice_id: str | None  # to charge now
    refund_order_id: str | None  # to refund ``refund_amount`` of
    refund_amount: int


async def _paid_this_period(session: AsyncSession, subscription: Subscription) -> Invoice | None:
    """The latest payment made for the current period (its invoice, or a plan change's)."""
    return (
        await session.execute(
            select(Invoice)
            .where(
                Invoice.subscription_id == subscription.id,
                Invoice.period_index == subscription.current_period_index,
                Invoice.status == "paid",
            )
            .order_by(Invoice.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()


async def change_items_now(
    session: AsyncSession,
    *,
    creator_id: str,
    subscription_id: str,
    items: Sequence[ItemRequest],
    now: datetime,
) -> PlanChange:
    """Replace the items now and settle the rest of the period (module doc). Before the
    first billed period (a trial, or waiting for the next cycle) nothing is prorated.

    Raises:
        SubscriptionNotFound, SubscriptionCanceled, InvalidSubscriptionItems.
    """
    subscription = await get_subscription(
        session, creator_id=creator_id, subscription_id=subscription_id, for_update=True
    )
    if subscription.status == "canceled":
        raise SubscriptionCanceled(f"subscription {subscription_id} is canceled")
    at = await billing_now(session, test_clock_id=subscription.test_clock_id, now=now)
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
    old_amount = amount_of(subscription)
    rows = item_rows(priced, creator_id=creator_id, now=at)
    new_amount = sum(row.unit_amount * row.quantity for row in rows)
    paid = await _paid_this_period(session, subscription)
    subscription.items = rows
    subscription.updated_at = at
    change: proration.Proration | None = None
    invoice_id: str | None = None
    refund_order_id: str | None = None
    refund_amount = 0
    if subscription.current_period_index >= subscription.first_period_index and paid is not None:
        change = proration.prorate_change(
            period_start=subscription.current_period_start,
            period_end=subscription.current_period_end,
            at=at,
            old_amount=old_amount,
            new_amount=new_amount,
        )
        if change.amount_due > 0:
            invoice = _proration_invoice(subscription, change=change, rows_from=rows[0], at=at)
            session.add(invoice)
            await emit_invoice(session, invoice, "invoice.created", now=at)
            await schedule_charge(
                session,
                invoice,
                test_clock_id=subscription.test_clock_id,
                attempt=1,
                due_at=at,
                now=at,
            )
            invoice_id = invoice.id
        elif change.amount_due < 0 and paid.order_id is not None:
            refund_order_id = paid.order_id
            refund_amount = min(-change.amount_due, paid.amount_paid)
    await emit(session, subscription, "customer.subscription.updated", now=at)
    return PlanChange(
        subscription=subscription,
        proration=change,
        invoice_id=invoice_id,
        refund_order_id=refund_order_id,
        refund_amount=refund_amount,
    )


def _proration_invoice(
    subscription: Subscription,
    *,
    change: proration.Proration,
    rows_from: SubscriptionItem,
    at: datetime,
) -> Invoice:
    """The invoice for what a change costs now: one proration line, on the first new item
    (an order needs a product and a SKU for each line)."""
    item = rows_from
    line = InvoiceLine(
        creator_id=subscription.creator_id,
        price_id=item.price_id,
        product_id=item.product_id,
        variant_id=item.variant_id,
        sku=item.sku,
        description=f"Plan change for the rest of the period: {change.charge} for the new "
        f"items less {change.credit} unused",
        quantity=1,
        unit_amount=change.amount_due,
        amount=change.amount_due,
        period_start=at,
        period_end=change.period_end,
        is_proration=True,
    )
    return Invoice(
        id=new_id("in"),
        creator_id=subscription.creator_id,
        customer_id=subscription.customer_id,
        subscription_id=subscription.id,
        period_key=None,
        period_index=subscription.current_period_index,
        billing_reason="subscription_update",
        status="open",
        currency=subscription.currency,
        period_start=at,
        period_end=change.period_end,
        amount_due=change.amount_due,
        amount_paid=0,
        attempt_count=0,
        next_payment_attempt=at,
        created_at=at,
        updated_at=at,
        lines=[line],
    )
