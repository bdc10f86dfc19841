"""Changes a buyer or creator makes to a running subscription: cancel (at period end or
at once, with a pro-rata refund inside the cooling-off window), undo a pending
cancellation, pause and resume, skip the next cycle, and preview a plan change.

Each change is one short transaction under the subscription's lock and emits its event;
an immediate cancellation's refund is then made in the three steps of a refund (no
gateway call inside a transaction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts.models import Customer
from stallholder.billing import cooling_off, lifecycle, proration, reminders, wallet_first
from stallholder.billing.models import Invoice, Subscription
from stallholder.billing.renewal import end_subscription
from stallholder.billing.schemas import amount_of
from stallholder.billing.subscriptions import (
    ItemRequest,
    SubscriptionCanceled,
    billing_now,
    emit,
    get_subscription,
    priced_items,
)
from stallholder.kit.db import Database
from stallholder.kit.errors import Conflict
from stallholder.orders import service as orders
from stallholder.payments.gateway import Gateway


class NothingToUndo(Conflict):
    slug = "subscription-not-canceling"
    title = "The subscription has no pending cancellation"


class SkipTooLate(Conflict):
    slug = "subscription-skip-too-late"
    title = "The next cycle can no longer be skipped"


@dataclass(frozen=True, slots=True)
class Cancellation:
    subscription: Subscription
    # An immediate cancellation's refund to make (the paid order and the amount), if any.
    refund_order_id: str | None
    refund_amount: int


async def _latest_paid_invoice(session: AsyncSession, subscription: Subscription) -> Invoice | None:
    return (
        await session.execute(
            select(Invoice)
            .where(
                Invoice.subscription_id == subscription.id,
                Invoice.status == "paid",
                Invoice.period_index == subscription.current_period_index,
            )
            .order_by(Invoice.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()


async def cancel(
    session: AsyncSession,
    *,
    creator_id: str,
    subscription_id: str,
    at_period_end: bool,
    reason: str | None,
    now: datetime,
) -> Cancellation:
    """Cancel at the end of the current period (the default: the buyer keeps what was
    paid for) or at once. At once inside the cooling-off window (14 days since the
    subscription started, for a buyer in the EU or UK: ``cooling_off.py``) the unused
    part of the current period is refunded pro rata. Asking again changes nothing but the
    reason; a cancellation receipt is emailed.

    Raises:
        SubscriptionNotFound, SubscriptionCanceled.
    """
    subscription = await get_subscription(
        session, creator_id=creator_id, subscription_id=subscription_id, for_update=True
    )
    if subscription.status == "canceled":
        raise SubscriptionCanceled(f"subscription {subscription_id} is canceled already")
    at = await billing_now(session, test_clock_id=subscription.test_clock_id, now=now)
    subscription.cancel_requested_at = at
    subscription.cancellation_reason = reason
    subscription.updated_at = at
    refund_order_id: str | None = None
    refund_amount = 0
    if at_period_end and subscription.status != "incomplete":
        subscription.cancel_at_period_end = True
        subscription.cancel_at = subscription.current_period_end
        await emit(session, subscription, "customer.subscription.updated", now=at)
    else:
        subscription.cancel_at_period_end = False
        subscription.cancel_at = at
        paid = await _latest_paid_invoice(session, subscription)
        is_cooling_off = await in_cooling_off(session, subscription, at=at)
        if paid is not None and paid.order_id is not None and is_cooling_off:
            refund_amount = proration.prorated_refund(
                period_start=paid.period_start,
                period_end=paid.period_end,
                at=at,
                amount_paid=paid.amount_paid,
            )
            refund_order_id = paid.order_id if refund_amount > 0 else None
            subscription.refunded_amount = refund_amount if refund_order_id else 0
        elif paid is not None and paid.wallet_transaction_id is not None and is_cooling_off:
            # Paid from the wallet: refunded to the wallet, here and now (ADR 0016).
            refund_amount = proration.prorated_refund(
                period_start=paid.period_start,
                period_end=paid.period_end,
                at=at,
                amount_paid=paid.amount_paid,
            )
            if refund_amount > 0:
                await wallet_first.refund_invoice(
                    session, invoice=paid, amount=refund_amount, at=at
                )
            subscription.refunded_amount = refund_amount
        for invoice in await _open_invoices(session, subscription.id):
            invoice.status = "void"
            invoice.voided_at = at
            invoice.next_payment_attempt = None
            invoice.updated_at = at
        await end_subscription(session, subscription, at=at, churn="voluntary")
    await reminders.cancellation_receipt(session, subscription=subscription, at=at)
    return Cancellation(
        subscription=subscription, refund_order_id=refund_order_id, refund_amount=refund_amount
    )


async def in_cooling_off(
    session: AsyncSession, subscription: Subscription, *, at: datetime
) -> bool:
    """Whether the buyer may still withdraw (cancel at once with a pro-rata refund): a
    buyer in the EU or UK within 14 days of the signup."""
    customer = await session.get(Customer, subscription.customer_id)
    days = cooling_off.cooling_off_days(customer.country if customer is not None else None)
    return days > 0 and at - subscription.created_at <= timedelta(days=days)


async def withdrawal_refund(
    session: AsyncSession, subscription: Subscription, *, at: datetime
) -> int | None:
    """What cancelling at once would refund now, or None when the buyer has no right of
    withdrawal left (outside the EU/UK, or past the window): the portal's offer."""
    if subscription.status == "canceled" or not await in_cooling_off(session, subscription, at=at):
        return None
    paid = await _latest_paid_invoice(session, subscription)
    if paid is None:
        return 0
    return proration.prorated_refund(
        period_start=paid.period_start,
        period_end=paid.period_end,
        at=at,
        amount_paid=paid.amount_paid,
    )


async def _open_invoices(session: AsyncSession, subscription_id: str) -> Sequence[Invoice]:
    return (
        (
            await session.execute(
                select(Invoice).where(
                    Invoice.subscription_id == subscription_id, Invoice.status == "open"
                )
            )
        )
        .scalars()
        .all()
    )


async def refund_cancellation(
    database: Database,
    gateway: Gateway,
    *,
    cancellation: Cancellation,
    resolve_after: datetime,
    now: datetime,
) -> None:
    """Make an immediate cancellation's refund (the three steps of a refund), keyed by
    the subscription so a retry refunds once."""
    if cancellation.refund_order_id is None:
        return
    subscription = cancellation.subscription
    await orders.create_refund(
        database,
        gateway,
        creator_id=subscription.creator_id,
        order_id=cancellation.refund_order_id,
        amount=cancellation.refund_amount,
        reason="requested_by_customer",
        resolve_after=resolve_after,
        now=now,
        request_key=f"cancel:{subscription.id}",
    )


async def undo_cancellation(
    session: AsyncSession, *, creator_id: str, subscription_id: str, now: datetime
) -> Subscription:
    """Keep a subscription whose cancellation at period end has not taken effect.

    Raises:
        SubscriptionNotFound, SubscriptionCanceled, NothingToUndo.
    """
    subscription = await get_subscription(
        session, creator_id=creator_id, subscription_id=subscription_id, for_update=True
    )
    if subscription.status == "canceled":
        raise SubscriptionCanceled(
            f"subscription {subscription_id} has ended; it cannot be kept, start a new one"
        )
    if subscription.cancel_at is None:
        raise NothingToUndo(f"subscription {subscription_id} is not set to cancel")
    at = await billing_now(session, test_clock_id=subscription.test_clock_id, now=now)
    subscription.cancel_at = None
    subscription.cancel_at_period_end = False
    subscription.cancel_requested_at = None
    subscription.cancellation_reason = None
    subscription.updated_at = at
    await emit(session, subscription, "customer.subscription.updated", now=at)
    return subscription


async def pause(
    session: AsyncSession, *, creator_id: str, subscription_id: str, now: datetime
) -> Subscription:
    """Pause: periods go on passing (the calendar keeps its anchor) with no invoice until
    resumed.

    Raises:
        SubscriptionNotFound, InvalidTransition.
    """
    subscription = await get_subscription(
        session, creator_id=creator_id, subscription_id=subscription_id, for_update=True
    )
    at = await billing_now(session, test_clock_id=subscription.test_clock_id, now=now)
    subscription.status = lifecycle.transition(subscription.status, "pause")  # type: ignore[arg-type]
    subscription.paused_at = at
    subscription.updated_at = at
    await emit(session, subscription, "customer.subscription.paused", now=at)
    return subscription


async def resume(
    session: AsyncSession, *, creator_id: str, subscription_id: str, now: datetime
) -> Subscription:
    """Resume a paused subscription: the next invoice is the next period's, at its start.

    Raises:
        SubscriptionNotFound, InvalidTransition.
    """
    subscription = await get_subscription(
        session, creator_id=creator_id, subscription_id=subscription_id, for_update=True
    )
    at = await billing_now(session, test_clock_id=subscription.test_clock_id, now=now)
    subscription.status = lifecycle.transition(subscription.status, "resume")  # type: ignore[arg-type]
    subscription.paused_at = None
    subscription.updated_at = at
    await emit(session, subscription, "customer.subscription.resumed", now=at)
    await reminders.schedule(session, subscription, now=at)
    return subscription


async def skip_next_cycle(
    session: AsyncSession, *, creator_id: str, subscription_id: str, skip: bool, now: datetime
) -> Subscription:
    """Skip (or un-skip) the next cycle: no invoice and no delivery for it; the dates
    after it stay where they were.

    Raises:
        SubscriptionNotFound, SubscriptionCanceled, SkipTooLate.
    """
    subscription = await get_subscription(
        session, creator_id=creator_id, subscription_id=subscription_id, for_update=True
    )
    if subscription.status == "canceled":
        raise SubscriptionCanceled(f"subscription {subscription_id} is canceled")
    at = await billing_now(session, test_clock_id=subscription.test_clock_id, now=now)
    if at >= subscription.current_period_end:
        raise SkipTooLate("the next cycle is being billed now; try again after it renews")
    subscription.skip_period_index = subscription.current_period_index + 1 if skip else None
    subscription.updated_at = at
    await emit(session, subscription, "customer.subscription.updated", now=at)
    return subscription


@dataclass(frozen=True, slots=True)
class PlanChangePreview:
    """What changing the items would cost: ``now`` (prorated over the rest of the current
    period) or from the ``next_period`` on (nothing now)."""

    proration: proration.Proration
    current_amount: int
    new_amount: int
    next_period_start: datetime


async def preview_change(
    session: AsyncSession,
    *,
    creator_id: str,
    subscription_id: str,
    items: Sequence[ItemRequest],
    now: datetime,
    proration_date: datetime | None = None,
) -> PlanChangePreview:
    """The proration of changing to ``items`` at ``proration_date`` (default: now).

    Raises:
        SubscriptionNotFound, SubscriptionCanceled, InvalidSubscriptionItems.
    """
    subscription = await get_subscription(
        session, creator_id=creator_id, subscription_id=subscription_id
    )
    if subscription.status == "canceled":
        raise SubscriptionCanceled(f"subscription {subscription_id} is canceled")
    at = proration_date or await billing_now(
        session, test_clock_id=subscription.test_clock_id, now=now
    )
    priced = await priced_items(session, creator_id=creator_id, items=items)
    new_amount = sum((entry.price.unit_amount or 0) * entry.quantity for entry in priced)
    current = amount_of(subscription)
    change = proration.prorate_change(
        period_start=subscription.current_period_start,
        period_end=subscription.current_period_end,
        at=max(at, subscription.current_period_start),
        old_amount=current if subscription.current_period_index >= 0 else 0,
        new_amount=new_amount if subscription.current_period_index >= 0 else 0,
    )
    return PlanChangePreview(
        proration=change,
        current_amount=current,
        new_amount=new_amount,
        next_period_start=subscription.current_period_end,
    )
