from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, Field, StrictBool, StrictInt, model_validator

from stallholder.checkout.models import CheckoutLink, CheckoutSession
from stallholder.fulfilment.schemas import ShippingAddressIn
from stallholder.kit.schemas import Amount, Email, Input
from stallholder.orders.schemas import ShippingAddressOut


class LineItemIn(Input):
    price: str = Field(min_length=1, max_length=40)
    quantity: StrictInt = Field(default=1, ge=1, le=999)
    variant: str | None = Field(default=None, max_length=40)
    # Pay-what-you-want: the buyer's chosen unit amount.
    amount: Amount | None = None


class SessionCreate(Input):
    line_items: list[LineItemIn] = Field(min_length=1, max_length=100)
    customer: str | None = Field(default=None, max_length=40)
    customer_email: Email | None = None
    success_url: AnyHttpUrl | None = None
    cancel_url: AnyHttpUrl | None = None
    # Optional here; a session with physical items needs it before it is paid.
    shipping_address: ShippingAddressIn | None = None


class ConfirmIn(Input):
    payment_method: str = Field(min_length=1, max_length=100)
    # With a publishable key, the session's client secret proves the caller is its buyer.
    client_secret: str | None = Field(default=None, max_length=100)
    # For sessions opened without a customer (checkout links): who gets the receipt.
    customer_email: Email | None = None
    # Sets or replaces the session's shipping address (and so its shipping line).
    shipping_address: ShippingAddressIn | None = None
    # Subscription mode: the buyer agrees to the session's ``renewal_terms`` (required).
    consent: StrictBool | None = None


class SessionUpdate(Input):
    shipping_address: ShippingAddressIn | None = None
    # Pay-what-you-want: the buyer's unit amount for the session's pay-what-you-want item.
    amount: Amount | None = None
    # With a publishable key, the session's client secret proves the caller is its buyer.
    client_secret: str | None = Field(default=None, max_length=100)

    @model_validator(mode="after")
    def _something_to_change(self) -> SessionUpdate:
        if self.shipping_address is None and self.amount is None:
            raise ValueError("send shipping_address, amount or both")
        return self


class LinkCreate(Input):
    line_items: list[LineItemIn] = Field(min_length=1, max_length=100)
    success_url: AnyHttpUrl | None = None


class LinkUpdate(Input):
    active: bool


class LineItemOut(BaseModel):
    price: str
    product: str
    variant: str
    description: str
    quantity: int
    unit_amount: int
    amount_total: int


class NextAction(BaseModel):
    """What the buyer must do before the payment completes. ``authenticate`` (sandbox):
    confirm again with the authenticated token. ``use_stripe_sdk`` (Stripe): run Stripe.js
    ``handleNextAction`` with ``payment_intent_client_secret``, then confirm again."""

    type: Literal["authenticate", "use_stripe_sdk"]
    detail: str
    payment_intent_client_secret: str | None = None


class PaymentErrorOut(BaseModel):
    code: str
    message: str | None


class ShippingRateChosen(BaseModel):
    """The rate chosen for the session's address and what it charges."""

    id: str
    display_name: str
    amount: int


class SessionOut(BaseModel):
    object: Literal["checkout.session"] = "checkout.session"
    id: str
    status: str
    # payment | subscription (recurring prices: confirming subscribes the buyer)
    mode: str
    payment_status: str
    client_secret: str
    url: str
    currency: str
    amount_subtotal: int
    amount_shipping: int
    amount_total: int
    requires_shipping: bool
    shipping_address: ShippingAddressOut | None
    shipping_rate: ShippingRateChosen | None
    customer: str | None
    customer_email: str | None
    line_items: list[LineItemOut]
    success_url: str | None
    cancel_url: str | None
    order: str | None
    # Subscription mode: the terms the buyer agrees to, and the subscription once complete.
    renewal_terms: str | None
    subscription: str | None
    next_action: NextAction | None
    last_payment_error: PaymentErrorOut | None
    expires_at: datetime
    created: datetime


class LinkOut(BaseModel):
    object: Literal["checkout.link"] = "checkout.link"
    id: str
    url: str
    active: bool
    line_items: list[dict[str, Any]]
    created: datetime


def _next_action(checkout: CheckoutSession) -> NextAction:
    if checkout.payment_action_secret is not None:
        return NextAction(
            type="use_stripe_sdk",
            detail=(
                "The card needs 3-D Secure. Call Stripe.js handleNextAction with "
                "payment_intent_client_secret, then confirm this session again."
            ),
            payment_intent_client_secret=checkout.payment_action_secret,
        )
    return NextAction(
        type="authenticate",
        detail=(
            "The card needs 3-D Secure. Authenticate the buyer, then confirm again with the "
            "authenticated payment method (sandbox: 'tok_visa_3ds_confirmed')."
        ),
    )


def present_session(checkout: CheckoutSession, *, base_url: str, status: str) -> SessionOut:
    """The session as the API and event payloads show it."""
    return SessionOut(
        id=checkout.id,
        status=status,
        mode=checkout.mode,
        payment_status=checkout.payment_status,
        client_secret=checkout.client_secret,
        url=f"{base_url}/pay/{checkout.id}",
        currency=checkout.currency,
        amount_subtotal=checkout.amount_subtotal,
        amount_shipping=checkout.amount_shipping,
        amount_total=checkout.amount_total,
        requires_shipping=checkout.requires_shipping,
        shipping_address=None
        if checkout.shipping_address is None
        else ShippingAddressOut.model_validate(checkout.shipping_address),
        shipping_rate=None
        if checkout.shipping_rate_id is None or checkout.shipping_rate_name is None
        else ShippingRateChosen(
            id=checkout.shipping_rate_id,
            display_name=checkout.shipping_rate_name,
            amount=checkout.amount_shipping,
        ),
        customer=checkout.customer_id,
        customer_email=checkout.customer_email,
        line_items=[
            LineItemOut(
                price=i.price_id,
                product=i.product_id,
                variant=i.variant_id,
                description=i.description,
                quantity=i.quantity,
                unit_amount=i.unit_amount,
                amount_total=i.amount_total,
            )
            for i in checkout.line_items
        ],
        success_url=checkout.success_url,
        cancel_url=checkout.cancel_url,
        order=checkout.order_id,
        renewal_terms=checkout.renewal_terms,
        subscription=checkout.subscription_id,
        next_action=_next_action(checkout)
        if checkout.payment_status == "requires_action" and checkout.status == "open"
        else None,
        last_payment_error=PaymentErrorOut(
            code=checkout.last_error_code, message=checkout.last_error_message
        )
        if checkout.last_error_code
        else None,
        expires_at=checkout.expires_at,
        created=checkout.created_at,
    )


def link_out(link: CheckoutLink, *, base_url: str) -> LinkOut:
    return LinkOut(
        id=link.id,
        url=f"{base_url}/l/{link.id}",
        active=link.is_active,
        line_items=link.line_items,
        created=link.created_at,
    )
