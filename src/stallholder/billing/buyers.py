"""A buyer's own view of their subscriptions across creators (the buyer portal).

Only the buyer's own pages use this: every read goes through the buyer's customers, one
per creator, so a buyer sees all and only their own subscriptions. A creator's API never
does (it reads by ``creator_id``, ``subscriptions.get_subscription``).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts.models import Customer
from stallholder.billing.invoices import InvoiceNotFound
from stallholder.billing.models import Invoice, Subscription
from stallholder.billing.subscriptions import SubscriptionNotFound

# Running subscriptions first, then the ones that need the buyer, then the ended ones.
_STATUS_ORDER = {
    "past_due": 0,
    "unpaid": 0,
    "incomplete": 0,
    "active": 1,
    "trialing": 1,
    "paused": 2,
    "canceled": 3,
}


async def subscriptions_of_buyer(session: AsyncSession, *, buyer_id: str) -> list[Subscription]:
    """Every subscription of the buyer, with every creator: those needing attention (a
    failed payment) first, then running, paused and ended ones, newest first in each."""
    found = list(
        (
            await session.execute(
                select(Subscription)
                .join(Customer, Customer.id == Subscription.customer_id)
                .where(Customer.buyer_id == buyer_id)
                .order_by(Subscription.created_at.desc(), Subscription.id.desc())
            )
        ).scalars()
    )
    return sorted(found, key=lambda subscription: _STATUS_ORDER.get(subscription.status, 4))


async def subscription_of_buyer(
    session: AsyncSession, *, buyer_id: str, subscription_id: str
) -> Subscription:
    """One of the buyer's subscriptions (any creator's).

    Raises:
        SubscriptionNotFound: no such subscription, or another buyer's.
    """
    subscription = (
        await session.execute(
            select(Subscription)
            .join(Customer, Customer.id == Subscription.customer_id)
            .where(Subscription.id == subscription_id, Customer.buyer_id == buyer_id)
        )
    ).scalar_one_or_none()
    if subscription is None:
        raise SubscriptionNotFound(f"you have no subscription {subscription_id!r}")
    return subscription


async def failed_invoice(session: AsyncSession, *, subscription_id: str) -> Invoice | None:
    """The subscription's open invoice whose payment failed (tried at least once), which
    a new card retries at once."""
    return (
        await session.execute(
            select(Invoice)
            .where(
                Invoice.subscription_id == subscription_id,
                Invoice.status == "open",
                Invoice.attempt_count > 0,
            )
            .order_by(Invoice.created_at.desc(), Invoice.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()


async def wallet_paid_invoices(
    session: AsyncSession, *, buyer_id: str, limit: int = 100
) -> list[Invoice]:
    """The buyer's invoices paid from their wallet (no charge, so no order: ADR 0016),
    newest first: the portal lists them beside the orders as receipts."""
    return list(
        (
            await session.execute(
                select(Invoice)
                .join(Customer, Customer.id == Invoice.customer_id)
                .where(
                    Customer.buyer_id == buyer_id,
                    Invoice.status == "paid",
                    Invoice.wallet_transaction_id.is_not(None),
                )
                .order_by(Invoice.created_at.desc(), Invoice.id.desc())
                .limit(limit)
            )
        ).scalars()
    )


async def invoice_of_buyer(session: AsyncSession, *, buyer_id: str, invoice_id: str) -> Invoice:
    """One of the buyer's invoices (any creator's).

    Raises:
        InvoiceNotFound: no such invoice, or another buyer's.
    """
    invoice = (
        await session.execute(
            select(Invoice)
            .join(Customer, Customer.id == Invoice.customer_id)
            .where(Invoice.id == invoice_id, Customer.buyer_id == buyer_id)
        )
    ).scalar_one_or_none()
    if invoice is None:
        raise InvoiceNotFound(f"you have no invoice {invoice_id!r}")
    return invoice
