"""Retention offers: what a buyer about to cancel is offered instead (docs/billing.md,
"Retention offers").

A creator sets at most one offer per plan (price): a **discount** (``percent_off`` for
``duration_cycles`` invoices) or a **pause** instead. It is shown once, on the one
confirmation page of a cancellation, beside an equally prominent "Cancel subscription"
button, and never blocks: the buyer takes it (``accept``) or cancels anyway
(``decline``), and either way it is not offered to that subscription again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.billing import lifecycle
from stallholder.billing.models import RetentionOffer, Subscription
from stallholder.billing.subscriptions import billing_now, emit, get_subscription
from stallholder.catalog import service as catalog
from stallholder.kit.errors import Conflict, InvalidRequest, NotFound
from stallholder.kit.ids import new_id

OfferKind = Literal["discount", "pause"]
# A subscription in these states may be offered something; one past due is asked to fix
# its card instead, and a paused one has nothing to pause.
_OFFERABLE = frozenset({"active", "trialing"})


class RetentionOfferNotFound(NotFound):
    slug = "retention-offer-not-found"
    title = "No retention offer"


class RetentionOfferUnavailable(Conflict):
    slug = "retention-offer-unavailable"
    title = "No retention offer is available to this subscription"


class PriceNotRecurring(InvalidRequest):
    slug = "price-not-recurring"
    title = "Retention offers are for recurring prices"


@dataclass(frozen=True, slots=True)
class OfferTerms:
    kind: OfferKind
    percent_off: int | None
    duration_cycles: int | None


def describe(offer: RetentionOffer) -> str:
    """The offer in plain words, for the buyer: "50% off your next 3 payments"."""
    if offer.kind == "pause":
        return "Pause your subscription instead: no charges and no deliveries until you resume"
    cycles = offer.duration_cycles or 1
    payments = "payment" if cycles == 1 else f"{cycles} payments"
    return f"{offer.percent_off}% off your next {payments} if you stay"


async def set_offer(
    session: AsyncSession, *, creator_id: str, price_id: str, terms: OfferTerms, now: datetime
) -> RetentionOffer:
    """Set (or replace) the plan's one retention offer.

    Raises:
        PriceNotFound, PriceNotRecurring.
    """
    price = await catalog.get_price(session, creator_id=creator_id, price_id=price_id)
    if price.type != "recurring":
        raise PriceNotRecurring(f"price {price_id} is {price.type}; use a recurring price")
    offer = await _offer_of_price(session, price_id=price_id, for_update=True)
    if offer is None:
        offer = RetentionOffer(
            id=new_id("ro"), creator_id=creator_id, price_id=price_id, created_at=now
        )
        session.add(offer)
    offer.kind = terms.kind
    offer.percent_off = terms.percent_off if terms.kind == "discount" else None
    offer.duration_cycles = terms.duration_cycles if terms.kind == "discount" else None
    offer.updated_at = now
    await session.flush()
    return offer


async def _offer_of_price(
    session: AsyncSession, *, price_id: str, for_update: bool = False
) -> RetentionOffer | None:
    query = select(RetentionOffer).where(RetentionOffer.price_id == price_id)
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def get_offer(session: AsyncSession, *, creator_id: str, price_id: str) -> RetentionOffer:
    """Raises PriceNotFound, RetentionOfferNotFound."""
    await catalog.get_price(session, creator_id=creator_id, price_id=price_id)
    offer = await _offer_of_price(session, price_id=price_id)
    if offer is None:
        raise RetentionOfferNotFound(f"price {price_id} has no retention offer")
    return offer


async def delete_offer(session: AsyncSession, *, creator_id: str, price_id: str) -> RetentionOffer:
    """Remove the plan's offer (buyers canceling from now on are offered nothing).

    Raises PriceNotFound, RetentionOfferNotFound."""
    offer = await get_offer(session, creator_id=creator_id, price_id=price_id)
    await session.delete(offer)
    await session.flush()
    return offer


async def offer_for(session: AsyncSession, subscription: Subscription) -> RetentionOffer | None:
    """The offer to show this subscription's buyer now: its plan's offer, unless one was
    shown and answered already or the subscription is not running (canceled, ending,
    paused, past due)."""
    if (
        subscription.retention_offer_outcome is not None
        or subscription.status not in _OFFERABLE
        or subscription.cancel_at is not None
        or not subscription.items
    ):
        return None
    return await _offer_of_price(session, price_id=subscription.items[0].price_id)


async def available_offer(
    session: AsyncSession, *, creator_id: str, subscription_id: str
) -> RetentionOffer:
    """Raises SubscriptionNotFound, RetentionOfferUnavailable."""
    subscription = await get_subscription(
        session, creator_id=creator_id, subscription_id=subscription_id
    )
    offer = await offer_for(session, subscription)
    if offer is None:
        raise RetentionOfferUnavailable(_unavailable(subscription))
    return offer


def _unavailable(subscription: Subscription) -> str:
    if subscription.retention_offer_outcome is not None:
        return (
            f"subscription {subscription.id} was offered one already "
            f"({subscription.retention_offer_outcome}); an offer is shown once"
        )
    if subscription.status not in _OFFERABLE or subscription.cancel_at is not None:
        return f"subscription {subscription.id} is {subscription.status} and not running"
    return f"the plan of subscription {subscription.id} has no retention offer"


async def accept(
    session: AsyncSession, *, creator_id: str, subscription_id: str, now: datetime
) -> tuple[Subscription, RetentionOffer]:
    """The buyer takes the offer instead of canceling: the discount applies to the next
    ``duration_cycles`` invoices, or the subscription is paused (resume any time).
    Emits ``customer.subscription.retention_offer_accepted`` (and ``…paused`` for a pause).

    Raises:
        SubscriptionNotFound, RetentionOfferUnavailable.
    """
    subscription = await get_subscription(
        session, creator_id=creator_id, subscription_id=subscription_id, for_update=True
    )
    offer = await offer_for(session, subscription)
    if offer is None:
        raise RetentionOfferUnavailable(_unavailable(subscription))
    at = await billing_now(session, test_clock_id=subscription.test_clock_id, now=now)
    subscription.retention_offer_outcome = "accepted"
    subscription.retention_offer_at = at
    subscription.updated_at = at
    if offer.kind == "discount":
        subscription.discount_percent_off = offer.percent_off
        subscription.discount_cycles_remaining = offer.duration_cycles or 1
    else:
        subscription.status = lifecycle.transition(subscription.status, "pause")  # type: ignore[arg-type]
        subscription.paused_at = at
        await emit(session, subscription, "customer.subscription.paused", now=at)
    await emit(session, subscription, "customer.subscription.retention_offer_accepted", now=at)
    return subscription, offer


async def decline(session: AsyncSession, subscription: Subscription, *, at: datetime) -> bool:
    """The buyer saw the offer and canceled anyway: it is not offered again. Returns
    whether there was an offer to decline. Call under the subscription's lock, before
    the cancellation."""
    if await offer_for(session, subscription) is None:
        return False
    subscription.retention_offer_outcome = "declined"
    subscription.retention_offer_at = at
    return True
