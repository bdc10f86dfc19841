"""HTTP routes of the payments domain: creators' connected accounts and Stripe's webhooks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Request, Response

from stallholder.accounts.auth import AdminDep
from stallholder.events import inbox
from stallholder.kit.errors import NotFound
from stallholder.kit.http import NowDep, SessionDep, SettingsDep
from stallholder.payments import service
from stallholder.payments.schemas import (
    ConnectedAccountCreate,
    ConnectedAccountOut,
    WebhookReceivedOut,
)
from stallholder.payments.stripe_gateway import INBOX_SOURCE, StripeGateway

router = APIRouter(prefix="/v1", tags=["payments"])


class StripeNotEnabled(NotFound):
    slug = "stripe-not-enabled"
    title = "The Stripe gateway is not enabled"


@router.post(
    "/creators/{creator_id}/stripe_account",
    response_model=ConnectedAccountOut,
    responses={201: {"description": "The account was created"}},
)
async def connect_creator(
    creator_id: str,
    request: Request,
    response: Response,
    _: AdminDep,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    body: Annotated[ConnectedAccountCreate | None, Body()] = None,
) -> ConnectedAccountOut:
    """Give a creator its connected account (admin key): created on the first call (201),
    returned as it is after that (200), each time with a fresh onboarding link."""
    body = body or ConnectedAccountCreate()
    connection = await service.connect_creator(
        session,
        request.app.state.gateway,
        creator_id=creator_id,
        country=body.country,
        return_url=str(body.return_url or settings.base_url),
        refresh_url=str(body.refresh_url or settings.base_url),
        now=now,
    )
    response.status_code = 201 if connection.is_new else 200
    account = connection.account
    return ConnectedAccountOut(
        id=account.id,
        creator=account.creator_id,
        gateway=account.gateway,
        account=account.external_id,
        onboarding_url=connection.onboarding_url,
        created=account.created_at,
    )


@router.post(
    "/stripe/webhooks",
    response_model=WebhookReceivedOut,
    responses={
        400: {"description": "The Stripe-Signature does not verify"},
        404: {"description": "The platform does not use the Stripe gateway"},
    },
)
async def receive_stripe_webhook(
    request: Request,
    session: SessionDep,
    now: NowDep,
    stripe_signature: Annotated[str | None, Header()] = None,
) -> WebhookReceivedOut:
    """Stripe's events (no API key: the ``Stripe-Signature`` header authenticates them).

    A verified event is stored in the inbox for the worker; one Stripe sends again is
    acknowledged and ignored (``duplicate: true``).
    """
    gateway = request.app.state.gateway
    if not isinstance(gateway, StripeGateway):
        raise StripeNotEnabled(
            "this platform does not use Stripe (STALLHOLDER_PAYMENT_GATEWAY is not 'stripe')"
        )
    event = gateway.verify_webhook(await request.body(), stripe_signature)
    is_new = await inbox.record(
        session,
        source=INBOX_SOURCE,
        external_id=event.external_id,
        type=event.type,
        payload=event.payload,
        now=now,
    )
    return WebhookReceivedOut(duplicate=not is_new)
