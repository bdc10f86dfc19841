"""The hosted checkout pages: buy a price, collect the address, pay. No JavaScript needed."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from stallholder.accounts import service as accounts
from stallholder.checkout import service as checkout
from stallholder.checkout.schemas import ConfirmIn
from stallholder.fulfilment.addresses import country_choices
from stallholder.fulfilment.schemas import ShippingAddressIn
from stallholder.inventory import drops
from stallholder.inventory.api import admit_to_drop
from stallholder.kit.errors import DomainError
from stallholder.kit.http import NowDep, SessionDep, SettingsDep
from stallholder.ledger import service as ledger
from stallholder.orders import service as orders
from stallholder.web.templating import templates

router = APIRouter(include_in_schema=False)

SANDBOX_CHOICES = [
    ("tok_visa", "Visa — succeeds"),
    ("tok_authenticationRequired", "Card that needs 3-D Secure"),
    ("tok_visa_3ds_confirmed", "Authenticated card (after 3-D Secure)"),
    ("tok_chargeDeclined", "Card that is declined"),
    ("tok_insufficientFunds", "Card with insufficient funds"),
    ("tok_processingError", "Processor error (retry)"),
]


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
    return RedirectResponse(f"/checkout/{opened.id}", status_code=303)


async def _render(
    request: Request,
    session: SessionDep,
    session_id: str,
    now: Any,
    error: str | None = None,
    status_code: int = 200,
    address_form: dict[str, str] | None = None,
) -> Response:
    current = await checkout.get_session_by_id(session, session_id=session_id)
    creator = await accounts.get_creator(session, current.creator_id)
    receipt_number = None
    if current.order_id:
        order = await orders.get_order(
            session, creator_id=current.creator_id, order_id=current.order_id
        )
        receipt_number = order.receipt_number
    return templates.TemplateResponse(
        request,
        "checkout.html",
        status_code=status_code,
        context={
            "merchant": creator.display_name,
            "session_id": current.id,
            "status": checkout.effective_status(current, now),
            "subscribes": current.mode == "subscription",
            "renewal_terms": current.renewal_terms,
            "subscription_id": current.subscription_id,
            "lines": current.line_items,
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
            "email": current.customer_email,
            "needs_email": current.customer_id is None,
            "tokens": SANDBOX_CHOICES,
            "requires_action": current.payment_status == "requires_action",
            "error": error,
            "receipt_number": receipt_number,
            "success_url": current.success_url,
            "expires_at": current.expires_at,
        },
    )


def _form_errors(error: ValidationError) -> str:
    """What is wrong with the form, one field at a time, for the buyer to read."""
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']).replace('_', ' ')}: "
        f"{str(item['msg']).removeprefix('Value error, ')}"
        for item in error.errors()
    )


@router.get("/checkout/{session_id}", response_class=HTMLResponse)
async def hosted_checkout(
    session_id: str, request: Request, session: SessionDep, now: NowDep
) -> Response:
    return await _render(request, session, session_id, now)


@router.post("/checkout/{session_id}/shipping", response_class=HTMLResponse)
async def shipping(
    session_id: str,
    request: Request,
    session: SessionDep,
    now: NowDep,
    client_secret: Annotated[str, Form(max_length=100)],
    name: Annotated[str, Form(max_length=200)] = "",
    line1: Annotated[str, Form(max_length=200)] = "",
    line2: Annotated[str, Form(max_length=200)] = "",
    city: Annotated[str, Form(max_length=100)] = "",
    postal_code: Annotated[str, Form(max_length=20)] = "",
    state: Annotated[str, Form(max_length=100)] = "",
    country: Annotated[str, Form(max_length=2)] = "",
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
        return await _render(
            request,
            session,
            session_id,
            now,
            error=_form_errors(error),
            status_code=422,
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
            session_id,
            now,
            error=error.detail,
            status_code=error.status,
            address_form=typed,
        )
    return await _render(request, session, session_id, now)


@router.post("/checkout/{session_id}/pay", response_class=HTMLResponse)
async def pay(
    session_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    client_secret: Annotated[str, Form(max_length=100)],
    payment_method: Annotated[str, Form(max_length=100)],
    customer_email: Annotated[str | None, Form(max_length=320)] = None,
    consent: Annotated[str | None, Form(max_length=10)] = None,
) -> Response:
    """The hosted page's form: the same confirm the API runs, with the client secret.
    A subscription-mode session needs the consent checkbox ticked (``consent=yes``).

    The form is checked by the API's own confirm schema, so the page accepts exactly what
    ``POST /v1/checkout/sessions/{id}/confirm`` does. Each step of the confirm runs in a
    unit of work of its own (none is open during the gateway call), so an error part-way
    rolls that step back whole, while the page below renders from the request's session."""
    database = request.app.state.database
    async with database.unit_of_work() as reading:
        current = await checkout.get_session_by_id(reading, session_id=session_id)
    try:
        form = ConfirmIn(
            payment_method=payment_method,
            client_secret=client_secret,
            customer_email=customer_email or None,
        )
    except ValidationError as error:
        return await _render(
            request, session, session_id, now, error=_form_errors(error), status_code=422
        )
    try:
        if current.mode == "subscription":
            confirmer: checkout.SubscriptionConfirmer = request.app.state.subscription_confirmer
            outcome = await confirmer(
                database,
                request.app.state.gateway,
                creator_id=current.creator_id,
                session_id=session_id,
                payment_method=form.payment_method,
                client_secret=form.client_secret,
                customer_email=form.customer_email,
                consent=consent == "yes",
                ip_address=request.client.host if request.client else None,
                user_agent=request.headers.get("user-agent"),
                base_url=settings.base_url,
                now=now,
            )
        else:
            outcome = await checkout.confirm_session(
                database,
                request.app.state.gateway,
                creator_id=current.creator_id,
                session_id=session_id,
                payment_method=form.payment_method,
                client_secret=form.client_secret,
                customer_email=form.customer_email,
                default_fees=ledger.platform_fee_policy(settings),
                base_url=settings.base_url,
                resolve_after=now + settings.payment_resolve_after(),
                now=now,
            )
    except DomainError as error:
        return await _render(
            request, session, session_id, now, error=error.detail, status_code=error.status
        )
    if outcome.error is not None:
        return await _render(
            request,
            session,
            session_id,
            now,
            error=outcome.error.detail,
            status_code=outcome.error.status,
        )
    return await _render(request, session, session_id, now)
