"""The dashboard's figures: reads a creator's orders, refunds and subscriptions and
applies ``metrics`` (the definitions are there and in docs/dashboard.md).

Reads every subscription and every order of the last months of one creator: fine for the
small creators Stallholder is for (thousands of rows); a creator with millions would want
the series kept as rows written by the worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.analytics import metrics
from stallholder.billing.models import Subscription
from stallholder.orders.models import Order, Refund

MONTHS = 12


@dataclass(frozen=True, slots=True)
class CurrencySeries:
    """One currency's figures: this month's net revenue, MRR now, and 12 months of each."""

    currency: str
    revenue_this_month: int
    mrr: int
    revenue: list[metrics.MonthPoint]
    mrr_history: list[metrics.MonthPoint]


@dataclass(frozen=True, slots=True)
class Overview:
    active_subscribers: int
    subscribers_history: list[metrics.MonthPoint]
    currencies: list[CurrencySeries]


def _facts(subscription: Subscription) -> metrics.SubscriptionFacts:
    ended = subscription.ended_at
    if ended is None and subscription.status == "canceled":
        ended = subscription.canceled_at or subscription.updated_at
    return metrics.SubscriptionFacts(
        customer_id=subscription.customer_id,
        currency=subscription.currency,
        interval=subscription.interval,
        interval_count=subscription.interval_count,
        items=tuple((item.unit_amount, item.quantity) for item in subscription.items),
        started_at=subscription.created_at,
        trial_end=subscription.trial_end,
        # Paused now: counted out from when it was paused (pauses are not kept as history).
        paused_at=subscription.paused_at if subscription.status == "paused" else None,
        # Never started (the first payment did not go through): never counted.
        ended_at=subscription.created_at if subscription.status == "incomplete" else ended,
    )


async def overview(session: AsyncSession, *, creator_id: str, now: datetime) -> Overview:
    """The creator's revenue, MRR and active subscribers now and over the last 12 months,
    per currency (a currency appears once it has a sale or a subscription)."""
    months = metrics.last_months(now, MONTHS)
    since = months[0]
    subscriptions = [
        _facts(subscription)
        for subscription in (
            await session.execute(select(Subscription).where(Subscription.creator_id == creator_id))
        ).scalars()
    ]
    orders = [
        metrics.Sale(amount=row.amount_total, currency=row.currency, at=row.created_at)
        for row in await session.execute(
            select(Order.amount_total, Order.currency, Order.created_at).where(
                Order.creator_id == creator_id, Order.created_at >= since
            )
        )
    ]
    refunds = [
        metrics.Sale(amount=row.amount, currency=row.currency, at=row.created_at)
        for row in await session.execute(
            select(Refund.amount, Refund.currency, Refund.created_at).where(
                Refund.creator_id == creator_id,
                Refund.status == "succeeded",
                Refund.created_at >= since,
            )
        )
    ]
    currencies = sorted(
        {sale.currency for sale in orders} | {facts.currency for facts in subscriptions}
    )
    series = []
    for currency in currencies:
        revenue = metrics.net_revenue_by_month(orders, refunds, currency=currency, months=months)
        mrr_history = metrics.mrr_by_month(subscriptions, currency=currency, months=months, now=now)
        series.append(
            CurrencySeries(
                currency=currency,
                revenue_this_month=revenue[-1].value,
                mrr=metrics.mrr_at(subscriptions, now).get(currency, 0),
                revenue=revenue,
                mrr_history=mrr_history,
            )
        )
    return Overview(
        active_subscribers=metrics.active_subscribers_at(subscriptions, now),
        subscribers_history=metrics.active_subscribers_by_month(
            subscriptions, months=months, now=now
        ),
        currencies=series,
    )
