"""API input and output of the payments domain: connected accounts, saved payment methods
and Stripe webhooks."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, HttpUrl

from stallholder.kit.schemas import Input
from stallholder.payments.methods import CustomerPaymentMethod
from stallholder.payments.models import ConnectedAccount, PaymentAttempt


class ConnectedAccountCreate(Input):
    country: str | None = Field(
        default=None,
        pattern=r"^[A-Z]{2}$",
        description="ISO 3166 country of the creator's business; Stripe's default is the "
        "platform's country.",
    )
    return_url: HttpUrl | None = Field(
        default=None, description="Where onboarding sends the creator when done."
    )
    refresh_url: HttpUrl | None = Field(
        default=None, description="Where an expired onboarding link sends the creator."
    )


class ConnectedAccountOut(BaseModel):
    object: Literal["connected_account"] = "connected_account"
    id: str
    creator: str
    gateway: str
    account: str
    onboarding_url: str | None
    created: datetime


class WebhookReceivedOut(BaseModel):
    received: Literal[True] = True
    duplicate: bool


def attempt_payload(attempt: PaymentAttempt) -> dict[str, Any]:
    """A payment attempt as event payloads show it (never card data: only the token name)."""
    return {
        "id": attempt.id,
        "object": "payment_attempt",
        "purpose": attempt.purpose,
        "purpose_id": attempt.purpose_id,
        "checkout_session": attempt.purpose_id if attempt.purpose == "checkout_session" else None,
        "attempt_number": attempt.attempt_number,
        "off_session": attempt.is_off_session,
        "amount": attempt.amount,
        "currency": attempt.currency,
        "status": attempt.status,
        "decline_code": attempt.decline_code,
        "failure_message": attempt.failure_message,
        "gateway": attempt.gateway,
        "created": attempt.created_at.isoformat().replace("+00:00", "Z"),
    }


def connected_account_out(
    account: ConnectedAccount, *, onboarding_url: str | None
) -> ConnectedAccountOut:
    return ConnectedAccountOut(
        id=account.id,
        creator=account.creator_id,
        gateway=account.gateway,
        account=account.external_id,
        onboarding_url=onboarding_url,
        created=account.created_at,
    )


class PaymentMethodCreate(Input):
    token: str = Field(
        min_length=1,
        max_length=100,
        description="A gateway token for the buyer's card (sandbox: 'tok_visa'; Stripe: a "
        "'pm_…' from Stripe.js). Never a card number.",
    )


class PaymentMethodOut(BaseModel):
    """A buyer's saved method as the creator's customer sees it. ``chargeable``: the buyer
    saved it with this creator, so this creator may charge it off-session; a method saved
    with another creator is listed (the card is the buyer's) but not chargeable here."""

    object: Literal["payment_method"] = "payment_method"
    id: str
    customer: str
    type: str
    gateway: str
    default: bool
    chargeable: bool
    created: datetime
    detached: datetime | None


def payment_method_out(view: CustomerPaymentMethod) -> PaymentMethodOut:
    method = view.method
    return PaymentMethodOut(
        id=method.id,
        customer=view.customer_id,
        type=method.type,
        gateway=method.gateway,
        default=view.is_default,
        chargeable=view.is_granted,
        created=method.created_at,
        detached=method.detached_at,
    )
