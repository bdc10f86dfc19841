"""HTTP routes for retention offers (docs/api.md, docs/billing.md "Retention offers"):
a creator sets its plan's one offer; a headless cancellation flow reads the offer a
subscription may be shown and accepts it for the buyer, as the portal does."""

from __future__ import annotations

from fastapi import APIRouter

from stallholder.accounts.auth import SecretCreatorDep
from stallholder.billing import retention
from stallholder.billing.models import RetentionOffer
from stallholder.billing.schemas import (
    RetentionOfferIn,
    RetentionOfferOut,
    SubscriptionOut,
    retention_offer_out,
    subscription_out,
)
from stallholder.kit.http import NowDep, SessionDep

router = APIRouter(prefix="/v1", tags=["billing"])


def _out(offer: RetentionOffer) -> RetentionOfferOut:
    return retention_offer_out(offer, description=retention.describe(offer))


@router.post(
    "/prices/{price_id}/retention_offer",
    response_model=RetentionOfferOut,
    responses={400: {"description": "The price is not recurring (price-not-recurring)"}},
)
async def set_retention_offer(
    price_id: str,
    body: RetentionOfferIn,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    now: NowDep,
) -> RetentionOfferOut:
    """Set the plan's one retention offer (replacing any): a discount of ``percent_off``
    for ``duration_cycles`` invoices, or a pause. Shown once to a buyer who cancels."""
    offer = await retention.set_offer(
        session,
        creator_id=creator_id,
        price_id=price_id,
        terms=retention.OfferTerms(
            kind=body.kind, percent_off=body.percent_off, duration_cycles=body.duration_cycles
        ),
        now=now,
    )
    return _out(offer)


@router.get("/prices/{price_id}/retention_offer", response_model=RetentionOfferOut)
async def get_retention_offer(
    price_id: str, creator_id: SecretCreatorDep, session: SessionDep
) -> RetentionOfferOut:
    """The plan's retention offer (404 ``retention-offer-not-found`` when it has none)."""
    return _out(await retention.get_offer(session, creator_id=creator_id, price_id=price_id))


@router.delete("/prices/{price_id}/retention_offer", response_model=RetentionOfferOut)
async def delete_retention_offer(
    price_id: str, creator_id: SecretCreatorDep, session: SessionDep
) -> RetentionOfferOut:
    """Remove the plan's retention offer; returns the offer removed."""
    offer = await retention.delete_offer(session, creator_id=creator_id, price_id=price_id)
    return _out(offer)


@router.get(
    "/subscriptions/{subscription_id}/retention_offer",
    response_model=RetentionOfferOut,
    responses={409: {"description": "No offer may be shown (retention-offer-unavailable)"}},
)
async def subscription_retention_offer(
    subscription_id: str, creator_id: SecretCreatorDep, session: SessionDep
) -> RetentionOfferOut:
    """The offer to show this subscription's buyer before they cancel, if one may be
    shown: its plan has one, it was not shown and answered before, and the subscription
    is active or trialing and not already canceling."""
    offer = await retention.available_offer(
        session, creator_id=creator_id, subscription_id=subscription_id
    )
    return _out(offer)


@router.post(
    "/subscriptions/{subscription_id}/retention_offer/accept",
    response_model=SubscriptionOut,
    responses={409: {"description": "No offer may be taken (retention-offer-unavailable)"}},
)
async def accept_retention_offer(
    subscription_id: str, creator_id: SecretCreatorDep, session: SessionDep, now: NowDep
) -> SubscriptionOut:
    """The buyer takes the offer instead of canceling: the discount applies to the next
    invoices (``discount`` on the subscription), or the subscription is paused."""
    subscription, _ = await retention.accept(
        session, creator_id=creator_id, subscription_id=subscription_id, now=now
    )
    return subscription_out(subscription, now=now)
