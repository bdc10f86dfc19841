"""The hosted checkout page, ``/pay/{session}``: buy a price, collect the address, pay.

It works without JavaScript in the sandbox (a test-card picker and a 3-D Secure page the
buyer approves); with the Stripe gateway it mounts the Stripe Payment Element and runs
its ``next_action`` on the same page. ``?embed=1&origin=…`` is the same page inside
embed.js's overlay: it may be framed only by that origin (one of the creator's
``allowed_origins``) and tells it ``stallholder:complete`` / ``stallholder:close`` by
``postMessage`` to exactly that origin (docs/checkout-pages.md).

Every form is checked by the API's own schemas and services, so the page accepts exactly
what the API does; a refusal is shown next to the field it is about, with what the buyer
typed kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from stallholder.accounts import service as accounts
from stallholder.accounts.models import Creator
from stallholder.accounts.origins import is_origin_allowed, normalise_origin, origin_of
from stallholder.catalog import service as catalog
from stallholder.checkout import service as checkout
from stallholder.checkout.models import CheckoutSession
from stallholder.checkout.schemas import ConfirmIn
from stallholder.fulfilment.addresses import country_choices
from stallholder.fulfilment.schemas import ShippingAddressIn
from stallholder.inventory import drops
from stallholder.inventory.api import admit_to_drop
from stallholder.kit.errors import DomainError
from stallholder.kit.http import NowDep, SessionDep, SettingsDep
from stallholder.kit.money import exponent
from stallholder.ledger import service as ledger
from stallholder.orders import downloads
from stallholder.orders import service as orders
from stallholder.settings import Settings
from stallholder.web.security import verify_csrf
from stallholder.web.templating import templates

router = APIRouter(include_in_schema=False)

# The sandbox's test cards, as the buyer's card picker offers them. The authenticated
# card (``tok_visa_3ds_confirmed``) is not offered: the 3-D Secure page sends it.
SANDBOX_CHOICES = [
    ("tok_visa", "Visa — succeeds"),
    ("tok_authenticationRequired", "Card that needs 3-D Secure"),
    ("tok_chargeDeclined", "Card that is declined"),
    ("tok_insufficientFunds", "Card with insufficient funds"),
    ("tok_processingError", "Processor error (retry)"),
]
AUTHENTICATED_TOKEN = "tok_visa_3ds_confirmed"  # noqa: S105

# Which form field a refusal is about, by its problem slug (else it is shown on top).
FIELD_OF_PROBLEM = {
    "consent-required": "consent",
    "customer-email-required": "customer_email",
    "payment-declined": "payment_method",
    "payment-processing-error": "payment_method",
    "invalid-payment-method": "payment_method",
    "card-number-rejected": "payment_method",
    "invalid-line-item": "amount",
    "not-pay-what-you-want": "amount",
}


# The buyer reads these instead of the API's wording, which speaks to a developer.
BUYER_MESSAGES = {
    "consent-required": "Tick the box to agree to the renewal terms before you subscribe.",
    "customer-email-required": "Enter the email address your receipt should go to.",
}


@dataclass
class Refusal:
    """What the page shows after a refused form: messages by field, and what was typed."""

    status: int
    fields: dict[str, str] = field(default_factory=dict)
    general: str | None = None
    typed: dict[str, str] = field(default_factory=dict)


# Declines the buyer reads in plain words instead of the gateway's, by decline code: the
# same sentences static/stripe_errors.js shows for the same codes in the browser.
BUYER_DECLINES = {
    "payment_intent_authentication_failure": (
        "Your bank did not confirm this payment. Try again, or use another card."
    ),
}


def _buyer_message(error: DomainError) -> str:
    if error.slug == "payment-declined":
        declined = BUYER_DECLINES.get(str(error.extensions.get("decline_code")))
        if declined is not None:
            return declined
    return BUYER_MESSAGES.get(error.slug, error.detail)


def _refusal_of(error: DomainError, typed: dict[str, str]) -> Refusal:
    where = FIELD_OF_PROBLEM.get(error.slug)
    message = _buyer_message(error)
    if where is None:
        return Refusal(status=error.status, general=message, typed=typed)
    return Refusal(status=error.status, fields={where: message}, typed=typed)


def _refusal_of_form(error: ValidationError, typed: dict[str, str]) -> Refusal:
    fields: dict[str, str] = {}
    for item in error.errors():
        name = str(item["loc"][0]) if item["loc"] else "form"
        message = str(item["msg"]).removeprefix("Value error, ")
        fields.setdefault(name, f"{name.replace('_', ' ')}: {message}")
    return Refusal(status=422, fields=fields, typed=typed)


async def checkout_csrf(request: Request) -> None:
    """The checkout's forms carry the session's client secret, which no cookie holds, so a
    forged cross-site post cannot send it. On the platform's own page they also carry the
    cookie session's CSRF token. Inside embed.js's overlay on another site the browser
    withholds the platform's cookies from the iframe (SameSite), so there the client
    secret is the token.

    Raises:
        CsrfTokenInvalid: a hosted-mode form without this browser's token.
    """
    if request.query_params.get("embed") == "1":
        return
    await verify_csrf(request)


CsrfChecked = Depends(checkout_csrf)


def page_url(session_id: str, *, embed_origin: str | None, suffix: str = "", **query: str) -> str:
    """The page's URL, keeping the embedded mode across forms and redirects."""
    if embed_origin is not None:
        query = {"embed": "1", "origin": embed_origin, **query}
    return f"/pay/{session_id}{suffix}" + (f"?{urlencode(query)}" if query else "")


def _embed_origin(raw: str | None, *, creator: Creator, settings: Settings) -> str | None:
    """The origin that embeds the page, when it may (else None: the page is not framed)."""
    if not raw:
        return None
    own = origin_of(settings.base_url)
    if not is_origin_allowed(raw, allowed=creator.allowed_origins, own_origin=own):
        return None
    return normalise_origin(raw)


def _framing(response: Response, embed_origin: str | None) -> Response:
    """Only the embedding origin may frame the page, and nobody frames it otherwise."""
    ancestors = "'none'" if embed_origin is None else f"'self' {embed_origin}"
    response.headers["Content-Security-Policy"] = f"frame-ancestors {ancestors}"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _store_url(creator: Creator, current: CheckoutSession) -> str:
    """The session's ``cancel_url``, else the creator's store page (the index for a
    creator that is not listed: it has no public store page)."""
    return current.cancel_url or (f"/s/{creator.slug}" if creator.listed else "/")


async def _render(
    request: Request,
    session: SessionDep,
    settings: Settings,
    session_id: str,
    now: Any,
    *,
    embed_requested: str | None = None,
    refusal: Refusal | None = None,
    address_form: dict[str, str] | None = None,
    payment_method: str | None = None,
) -> Response:
    current = await checkout.get_session_by_id(session, session_id=session_id)
    creator = await accounts.get_creator(session, current.creator_id)
    embed_origin = _embed_origin(embed_requested, creator=creator, settings=settings)
    if embed_requested and embed_origin is None:
        response = templates.TemplateResponse(
            request,
            "checkout_refused_embed.html",
            status_code=403,
            context={"merchant": creator.display_name, "origin": embed_requested},
        )
        return _framing(response, None)
    receipt_number = None
    deliverables = None
    if current.order_id:
        order = await orders.get_order(
            session, creator_id=current.creator_id, order_id=current.order_id
        )
        receipt_number = order.receipt_number
        # What a digital order delivers, on the success page as in the receipt.
        found = await downloads.for_order(
            session, order=order, links=request.app.state.download_links, now=now
        )
        deliverables = None if found.is_empty else found
    products = {}
    for line in current.line_items:
        if line.product_id not in products:
            products[line.product_id] = await catalog.get_product(
                session, creator_id=current.creator_id, product_id=line.product_id
            )
    pay_what_you_want = await checkout.pay_what_you_want_bounds(session, checkout=current)
    gateway = request.app.state.gateway
    uses_stripe = gateway.name == "stripe"
    status = checkout.effective_status(current, now)
    refusal = refusal or Refusal(status=200)
    response = templates.TemplateResponse(
        request,
        "checkout.html",
        status_code=refusal.status,
        context={
            "merchant": creator.display_name,
            "store_url": _store_url(creator, current),
            "session_id": current.id,
            "status": status,
            "subscribes": current.mode == "subscription",
            "renewal_terms": current.renewal_terms,
            "subscription_id": current.subscription_id,
            "lines": [
                {
                    "description": line.description,
                    "quantity": line.quantity,
                    "amount_total": line.amount_total,
                    "details": products[line.product_id].description,
                    "kind": products[line.product_id].kind,
                    "image": next(iter(products[line.product_id].images), None),
                }
                for line in current.line_items
            ],
            "subtotal": current.amount_subtotal,
            "shipping_amount": current.amount_shipping,
            "shipping_rate_name": current.shipping_rate_name,
            "requires_shipping": current.requires_shipping,
            "has_address": current.shipping_address is not None,
            # What the buyer typed when it was refused, else the session's address.
            "address": address_form or current.shipping_address or {},
            "countries": country_choices(),
            "total": current.amount_total,
            "currency": current.currency,
            "client_secret": current.client_secret,
            "email": refusal.typed.get("customer_email") or current.customer_email or "",
            "needs_email": current.customer_id is None,
            "pay_what_you_want": pay_what_you_want,
            "amount_value": refusal.typed.get("amount")
            or (
                ""
                if pay_what_you_want is None
                else major_units(pay_what_you_want.chosen, current.currency)
            ),
            "chosen_method": refusal.typed.get("payment_method", "tok_visa"),
            "consent_ticked": refusal.typed.get("consent") == "yes",
            "tokens": SANDBOX_CHOICES,
            "uses_stripe": uses_stripe,
            "stripe_publishable_key": settings.stripe_publishable_key,
            # Stripe: the PaymentIntent's secret for Stripe.js ``handleNextAction``, and the
            # payment method to confirm with again afterwards.
            "action_secret": current.payment_action_secret
            if status == "open" and current.payment_status == "requires_action"
            else None,
            "payment_method": payment_method or "",
            "requires_action": current.payment_status == "requires_action" and status == "open",
            "errors": refusal.fields,
            "error": refusal.general,
            "last_error": current.last_error_message
            if status == "open" and not refusal.fields and not refusal.general
            else None,
            "receipt_number": receipt_number,
            "deliverables": deliverables,
            "receipt_email": current.customer_email,
            "success_url": current.success_url,
            "expires_at": current.expires_at,
            "embed_origin": embed_origin,
            "action": page_url(current.id, embed_origin=embed_origin, suffix="/pay"),
            "shipping_action": page_url(current.id, embed_origin=embed_origin, suffix="/shipping"),
            "order_id": current.order_id,
            "authenticate_url": page_url(
                current.id, embed_origin=embed_origin, suffix="/authenticate"
            ),
        },
    )
    return _framing(response, embed_origin)


@router.get("/buy/{price_id}")
async def buy(
    request: Request, price_id: str, session: SessionDep, settings: SettingsDep, now: NowDep
) -> Response:
    # A drop's price is limited per client address like the API's sessions (the buyer's
    # email is not known yet); 429 ``rate-limited`` with Retry-After.
    await admit_to_drop(request, email=None, now=now, only_if=drops.sold_in_a_drop([price_id]))
    opened = await checkout.open_session_for_price(
        session,
        price_id=price_id,
        now=now,
        ttl=timedelta(seconds=settings.checkout_session_ttl_seconds),
    )
    return RedirectResponse(f"/pay/{opened.id}", status_code=303)


@router.get("/checkout/{session_id}")
async def old_checkout_url(session_id: str, request: Request) -> Response:
    """The page's first address: links already sent keep working."""
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(f"/pay/{session_id}{query}", status_code=301)


@router.get("/pay/{session_id}", response_class=HTMLResponse)
async def hosted_checkout(
    session_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    origin: str | None = None,
) -> Response:
    return await _render(request, session, settings, session_id, now, embed_requested=origin)


@router.get("/pay/{session_id}/authenticate", response_class=HTMLResponse)
async def authenticate(
    session_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    origin: str | None = None,
    consent: str | None = None,
) -> Response:
    """The sandbox's 3-D Secure challenge: the buyer approves the payment, which confirms
    the session again with the authenticated card (as the bank's page would)."""
    current = await checkout.get_session_by_id(session, session_id=session_id)
    creator = await accounts.get_creator(session, current.creator_id)
    embed_origin = _embed_origin(origin, creator=creator, settings=settings)
    if current.payment_status != "requires_action" or (
        checkout.effective_status(current, now) != "open"
    ):
        return RedirectResponse(page_url(session_id, embed_origin=embed_origin), status_code=303)
    response = templates.TemplateResponse(
        request,
        "checkout_authenticate.html",
        context={
            "merchant": creator.display_name,
            "total": current.amount_total,
            "currency": current.currency,
            "client_secret": current.client_secret,
            "token": AUTHENTICATED_TOKEN,
            "consent": consent == "yes",
            "embed_origin": embed_origin,
            "action": page_url(session_id, embed_origin=embed_origin, suffix="/pay"),
            "back": page_url(session_id, embed_origin=embed_origin),
        },
    )
    return _framing(response, embed_origin)


@router.post("/pay/{session_id}/shipping", response_class=HTMLResponse, dependencies=[CsrfChecked])
async def shipping(
    session_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    client_secret: Annotated[str, Form(max_length=100)],
    name: Annotated[str, Form(max_length=200)] = "",
    line1: Annotated[str, Form(max_length=200)] = "",
    line2: Annotated[str, Form(max_length=200)] = "",
    city: Annotated[str, Form(max_length=100)] = "",
    postal_code: Annotated[str, Form(max_length=20)] = "",
    state: Annotated[str, Form(max_length=100)] = "",
    country: Annotated[str, Form(max_length=2)] = "",
    origin: str | None = None,
) -> Response:
    """The hosted page's address form: the API's session update, checked by its schema.
    The page then shows the chosen rate and the new total before the buyer pays."""
    typed = {
        "name": name,
        "line1": line1,
        "line2": line2,
        "city": city,
        "postal_code": postal_code,
        "state": state,
        "country": country,
    }
    try:
        form = ShippingAddressIn.model_validate(
            {key: value or None for key, value in typed.items()}
            | {"name": name, "line1": line1, "country": country}
        )
    except ValidationError as error:
        refusal = _refusal_of_form(error, {})
        refusal.general = "; ".join(refusal.fields.values())
        refusal.fields = {}
        return await _render(
            request,
            session,
            settings,
            session_id,
            now,
            embed_requested=origin,
            refusal=refusal,
            address_form=typed,
        )
    # Its own unit of work, as the pay form's: a refusal rolls it back whole, and the page
    # renders from the request's session afterwards.
    try:
        async with request.app.state.database.unit_of_work() as writing:
            current = await checkout.get_session_by_id(writing, session_id=session_id)
            await checkout.set_shipping_address(
                writing,
                creator_id=current.creator_id,
                session_id=session_id,
                client_secret=client_secret,
                address=form.to_address(),
                now=now,
            )
    except DomainError as error:
        return await _render(
            request,
            session,
            settings,
            session_id,
            now,
            embed_requested=origin,
            refusal=Refusal(status=error.status, general=error.detail),
            address_form=typed,
        )
    return await _render(request, session, settings, session_id, now, embed_requested=origin)


def major_units(amount: int, currency: str) -> str:
    """``550`` USD as ``"5.50"``: what the amount field shows."""
    return f"{Decimal(amount).scaleb(-exponent(currency)):f}"


def minor_units(typed: str, currency: str) -> int:
    """``"5"`` or ``"5.50"`` in ``currency``'s major unit, as an integer of minor units.

    Raises:
        ValueError: not a plain non-negative number with at most the currency's decimals.
    """
    try:
        value = Decimal(typed.strip().replace(",", ""))
    except InvalidOperation as error:
        raise ValueError(f"{typed!r} is not an amount; write it as 5 or 5.50") from error
    scaled = value.scaleb(exponent(currency))
    if not value.is_finite() or value < 0 or scaled != scaled.to_integral_value():
        raise ValueError(f"{typed!r} is not an amount in {currency.upper()}")
    return int(scaled)


@router.post("/pay/{session_id}/pay", response_class=HTMLResponse, dependencies=[CsrfChecked])
async def pay(
    session_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    client_secret: Annotated[str, Form(max_length=100)],
    payment_method: Annotated[str, Form(max_length=100)] = "",
    customer_email: Annotated[str | None, Form(max_length=320)] = None,
    consent: Annotated[str | None, Form(max_length=10)] = None,
    amount: Annotated[str | None, Form(max_length=20)] = None,
    origin: str | None = None,
) -> Response:
    """The hosted page's form: the same confirm the API runs, with the client secret.
    A subscription-mode session needs the consent checkbox ticked (``consent=yes``); a
    pay-what-you-want session takes the buyer's ``amount`` (major units) first.

    Each step runs in a unit of work of its own (none is open during the gateway call), so
    an error part-way rolls that step back whole, while the page renders from the
    request's session."""
    database = request.app.state.database
    typed = {
        "customer_email": customer_email or "",
        "payment_method": payment_method,
        "consent": consent or "",
        "amount": amount or "",
    }

    async def refused(refusal: Refusal) -> Response:
        return await _render(
            request, session, settings, session_id, now, embed_requested=origin, refusal=refusal
        )

    async with database.unit_of_work() as reading:
        current = await checkout.get_session_by_id(reading, session_id=session_id)
        creator = await accounts.get_creator(reading, current.creator_id)
    embed_origin = _embed_origin(origin, creator=creator, settings=settings)
    try:
        form = ConfirmIn(
            payment_method=payment_method,
            client_secret=client_secret,
            customer_email=customer_email or None,
            consent=consent == "yes",
        )
    except ValidationError as error:
        return await refused(_refusal_of_form(error, typed))
    try:
        if amount is not None and amount.strip():
            try:
                chosen = minor_units(amount, current.currency)
            except ValueError as error:
                return await refused(
                    Refusal(status=422, fields={"amount": str(error)}, typed=typed)
                )
            async with database.unit_of_work() as writing:
                await checkout.set_chosen_amount(
                    writing,
                    creator_id=current.creator_id,
                    session_id=session_id,
                    client_secret=form.client_secret,
                    amount=chosen,
                    now=now,
                )
        outcome = await _confirm(request, settings, current, form, now=now)
    except DomainError as error:
        return await refused(_refusal_of(error, typed))
    if outcome.error is not None:
        return await refused(_refusal_of(outcome.error, typed))
    if outcome.session.payment_status == "requires_action":
        if outcome.session.payment_action_secret is None:
            # The sandbox: its 3-D Secure page, which confirms with the authenticated card.
            extra = {"consent": "yes"} if form.consent else {}
            return RedirectResponse(
                page_url(session_id, embed_origin=embed_origin, suffix="/authenticate", **extra),
                status_code=303,
            )
        # Stripe: the page runs Stripe.js handleNextAction, then sends the form again.
        return await _render(
            request,
            session,
            settings,
            session_id,
            now,
            embed_requested=origin,
            refusal=Refusal(status=200, typed=typed),
            payment_method=form.payment_method,
        )
    return RedirectResponse(page_url(session_id, embed_origin=embed_origin), status_code=303)


async def _confirm(
    request: Request,
    settings: Settings,
    current: CheckoutSession,
    form: ConfirmIn,
    *,
    now: Any,
) -> checkout.ConfirmOutcome:
    database = request.app.state.database
    if current.mode == "subscription":
        confirmer: checkout.SubscriptionConfirmer = request.app.state.subscription_confirmer
        return await confirmer(
            database,
            request.app.state.gateway,
            creator_id=current.creator_id,
            session_id=current.id,
            payment_method=form.payment_method,
            client_secret=form.client_secret,
            customer_email=form.customer_email,
            consent=form.consent is True,
            ip_address=request.client.host if request.client else None,
            user_agent=request.headers.get("user-agent"),
            base_url=settings.base_url,
            now=now,
        )
    return await checkout.confirm_session(
        database,
        request.app.state.gateway,
        creator_id=current.creator_id,
        session_id=current.id,
        payment_method=form.payment_method,
        client_secret=form.client_secret,
        customer_email=form.customer_email,
        default_fees=ledger.platform_fee_policy(settings),
        base_url=settings.base_url,
        resolve_after=now + settings.payment_resolve_after(),
        now=now,
    )
