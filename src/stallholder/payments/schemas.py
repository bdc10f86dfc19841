"""API input and output of the payments domain: connected accounts, saved payment methods
and Stripe webhooks."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, HttpUrl

from stallholder.kit.schemas import Input, Output


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


class PaymentMethodCreate(Input):
    token: str = Field(
        min_length=1,
        max_length=100,
        description="A gateway token for the buyer's card (sandbox: 'tok_visa'; Stripe: a "
        "'pm_…' from Stripe.js). Never a card number.",
    )


class PaymentMethodOut(Output):
    object: Literal["payment_method"] = "payment_method"
    id: str
    customer: str = Field(validation_alias="customer_id")
    type: str
    gateway: str
    default: bool = Field(validation_alias="is_default")
    created: datetime = Field(validation_alias="created_at")
    detached: datetime | None = Field(validation_alias="detached_at")
