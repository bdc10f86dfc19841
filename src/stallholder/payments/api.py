"""HTTP routes of the payments domain: creators' connected accounts, customers' saved
payment methods and Stripe's webhooks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Request, Response

from stallholder.accounts.auth import AdminDep, SecretCreatorDep
from stallholder.events import inbox
from stallholder.kit.errors import NotFound
from stallholder.kit.http import NowDep, RequestKeyDep, SessionDep, SettingsDep
from stallholder.kit.pagination import DEFAULT_LIMIT, MAX_LIMIT
from stallholder.kit.schemas import ListOut
from stallholder.payments import methods, service
from stallholder.payments.schemas import (
    ConnectedAccountCreate,
    ConnectedAccountOut,
    PaymentMethodCreate,
    PaymentMethodOut,
    WebhookReceivedOut,
    connected_account_out,
    payment_method_out,
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
        request.app.state.database,
        request.app.state.gateway,
        creator_id=creator_id,
        country=body.country,
        return_url=str(body.return_url or settings.base_url),
        refresh_url=str(body.refresh_url or settings.base_url),
        now=now,
        session=session,
    )
    response.status_code = 201 if connection.is_new else 200
    return connected_account_out(connection.account, onboarding_url=connection.onboarding_url)


# Saved payment methods -------------------------------------------------------------
# The gateway is called with no transaction open: each service reads in a unit of work of
# its own and records on the request's ``session`` only after the gateway answered.


@router.post(
    "/customers/{customer_id}/payment_methods",
    status_code=201,
    response_model=PaymentMethodOut,
    responses={
        400: {"description": "A card number, or not a token"},
        402: {"description": "The gateway refused to save the payment method"},
        404: {"description": "No such customer (or another creator's)"},
    },
)
async def save_payment_method(
    customer_id: str,
    body: PaymentMethodCreate,
    request: Request,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    now: NowDep,
    request_key: RequestKeyDep,
) -> PaymentMethodOut:
    """Save a tokenised card to the customer's buyer, reusable off-session by this
    creator (renewals, invoices, wallet top-ups). A card the buyer saved with another
    creator is not saved twice: this creator is granted its use. The customer's first
    method becomes its default."""
    method = await methods.save_payment_method(
        request.app.state.database,
        request.app.state.gateway,
        creator_id=creator_id,
        customer_id=customer_id,
        token=body.token,
        now=now,
        session=session,
        request_key=request_key,
    )
    return payment_method_out(method)


@router.get(
    "/customers/{customer_id}/payment_methods",
    response_model=ListOut,
    responses={404: {"description": "No such customer (or another creator's)"}},
)
async def list_payment_methods(
    customer_id: str,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> ListOut:
    """The saved (attached) payment methods of the customer's buyer, newest first,
    whichever creator they were saved with; ``chargeable`` says which this creator may
    charge."""
    page = await methods.list_payment_methods(
        session,
        creator_id=creator_id,
        customer_id=customer_id,
        limit=limit,
        starting_after=starting_after,
    )
    return ListOut(data=[payment_method_out(m) for m in page.data], has_more=page.has_more)


@router.delete(
    "/customers/{customer_id}/payment_methods/{payment_method_id}",
    response_model=PaymentMethodOut,
    responses={
        403: {"description": "The buyer saved the method with another creator only"},
        404: {"description": "No such customer or attached payment method"},
    },
)
async def detach_payment_method(
    customer_id: str,
    payment_method_id: str,
    request: Request,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    now: NowDep,
) -> PaymentMethodOut:
    """Withdraw this creator's use of a saved method (it stops being chargeable here and
    stops being the default). The method is the buyer's: when no other creator the buyer
    saved it with still uses it, it is detached at the gateway and returned with
    ``detached`` set. A method saved with other creators only is a 403."""
    method = await methods.detach_payment_method(
        request.app.state.database,
        request.app.state.gateway,
        creator_id=creator_id,
        customer_id=customer_id,
        payment_method_id=payment_method_id,
        now=now,
        session=session,
    )
    return payment_method_out(method)


@router.post(
    "/customers/{customer_id}/payment_methods/{payment_method_id}/default",
    response_model=PaymentMethodOut,
    responses={
        403: {"description": "The buyer saved the method with another creator only"},
        404: {"description": "No such customer or attached payment method"},
    },
)
async def set_default_payment_method(
    customer_id: str, payment_method_id: str, creator_id: SecretCreatorDep, session: SessionDep
) -> PaymentMethodOut:
    """Make this the customer's default payment method: this creator's off-session
    charges that name no method use it. The previous default stops being one. Defaults
    are per customer, so each creator the buyer supports keeps its own."""
    method = await methods.set_default_payment_method(
        session,
        creator_id=creator_id,
        customer_id=customer_id,
        payment_method_id=payment_method_id,
    )
    return payment_method_out(method)


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
