"""HTTP routes for checkout sessions and checkout links."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse

from stallholder.accounts import service as accounts
from stallholder.accounts.auth import AnyCreatorDep, PrincipalDep, SecretCreatorDep
from stallholder.accounts.origins import origin_of
from stallholder.checkout import service
from stallholder.checkout.models import CheckoutSession
from stallholder.checkout.schemas import (
    ConfirmIn,
    LineItemIn,
    LinkCreate,
    LinkOut,
    LinkUpdate,
    SessionCreate,
    SessionOut,
    SessionUpdate,
    link_out,
    present_session,
)
from stallholder.inventory.api import admit_to_drop, holds_stock, rate_limited
from stallholder.kit.http import NowDep, SessionDep, SettingsDep, problem_response
from stallholder.ledger import service as ledger
from stallholder.settings import Settings

router = APIRouter(prefix="/v1", tags=["checkout"])
# The routes whose Idempotency-Key is claimed at the commit (ADR 0028): creating a session
# is all in the request's unit of work, and a confirm is keyed by its session (its attempt
# is locked and numbered, a complete session answers as it stands), so a duplicate that
# runs beside the first makes no second effect and replays the first's response.
CLAIMS_KEY_AT_COMMIT = (
    re.compile(r"/v1/checkout/sessions"),
    re.compile(r"/v1/checkout/sessions/[^/]+/confirm"),
)
public_router = APIRouter(tags=["checkout"])


def session_out(checkout: CheckoutSession, *, settings: Settings, now: datetime) -> SessionOut:
    return present_session(
        checkout, base_url=settings.base_url, status=service.effective_status(checkout, now)
    )


def _lines(items: list[LineItemIn]) -> list[service.LineRequest]:
    return [
        service.LineRequest(
            price_id=i.price, quantity=i.quantity, variant_id=i.variant, amount=i.amount
        )
        for i in items
    ]


@router.post(
    "/checkout/sessions",
    status_code=201,
    response_model=SessionOut,
    dependencies=[Depends(holds_stock), Depends(rate_limited)],
    responses={
        403: {
            "description": "A browser on a site the creator does not list in "
            "`allowed_origins` used the publishable key (`origin-not-allowed`)"
        }
    },
)
async def create_session(
    request: Request,
    body: SessionCreate,
    principal: PrincipalDep,
    creator_id: AnyCreatorDep,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
) -> SessionOut:
    """Open a checkout session (secret or publishable key). It expires after 30 minutes.
    The stock of tracked items is held for it until then (409 ``out-of-stock`` names the
    SKU and what is left). A session for a drop's prices is limited per IP and per buyer
    (429 ``rate-limited`` with ``Retry-After``).

    From a browser (CORS) with the publishable key, the page's origin must be the
    platform's own or one of the creator's ``allowed_origins``."""
    if principal.kind == "publishable":
        await accounts.check_browser_origin(
            session,
            creator_id=creator_id,
            origin=request.headers.get("origin"),
            own_origin=origin_of(settings.base_url),
        )

    async def admit() -> None:
        await admit_to_drop(request, email=body.customer_email, customer_id=body.customer, now=now)

    checkout = await service.create_session(
        session,
        creator_id=creator_id,
        lines=_lines(body.line_items),
        customer_id=body.customer,
        customer_email=body.customer_email,
        success_url=str(body.success_url) if body.success_url else None,
        cancel_url=str(body.cancel_url) if body.cancel_url else None,
        ttl=timedelta(seconds=settings.checkout_session_ttl_seconds),
        now=now,
        shipping_address=body.shipping_address.to_address() if body.shipping_address else None,
        # The hot rows' updates at the commit: the idempotency middleware and SessionDep's
        # unit of work both run them and answer their out-of-stock (ADR 0024).
        holds_at_commit=True,
        # A plain session is written at the commit, with the Idempotency-Key's row.
        write_at_commit=True,
        # A session for a drop's prices counts against the drop's rate limits once its
        # price read says so.
        admit_to_drop=admit,
        quoter=request.app.state.subscription_quoter,
    )
    return session_out(checkout, settings=settings, now=now)


@router.get("/checkout/sessions/{session_id}", response_model=SessionOut)
async def get_session(
    session_id: str,
    principal: PrincipalDep,
    creator_id: AnyCreatorDep,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    client_secret: str | None = None,
) -> SessionOut:
    """A publishable key must also pass the session's ``client_secret``."""
    checkout = await service.get_session(
        session,
        creator_id=creator_id,
        session_id=session_id,
        client_secret=client_secret if principal.kind == "publishable" else None,
    )
    if principal.kind == "publishable" and client_secret is None:
        raise service.SessionNotFound(f"no checkout session {session_id!r}")
    return session_out(checkout, settings=settings, now=now)


@router.post(
    "/checkout/sessions/{session_id}",
    response_model=SessionOut,
    responses={
        409: {"description": "The session expired, or is paid or being paid"},
        422: {
            "description": "The address is invalid or the seller does not ship there, or "
            "the amount is outside the pay-what-you-want price's bounds"
        },
    },
)
async def update_session(
    session_id: str,
    body: SessionUpdate,
    principal: PrincipalDep,
    creator_id: AnyCreatorDep,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
) -> SessionOut:
    """Change an open session before it is paid (secret key, or publishable key with the
    ``client_secret``), so the buyer sees the new total before confirming:
    ``shipping_address`` sets or replaces the address (the rate is chosen and
    ``amount_shipping`` changes); ``amount`` is the buyer's own unit amount for a
    pay-what-you-want item, within the price's minimum and maximum."""
    if principal.kind == "publishable" and not body.client_secret:
        raise service.SessionNotFound(f"no checkout session {session_id!r}")
    client_secret = body.client_secret if principal.kind == "publishable" else None
    checkout = None
    if body.amount is not None:
        checkout = await service.set_chosen_amount(
            session,
            creator_id=creator_id,
            session_id=session_id,
            client_secret=client_secret,
            amount=body.amount,
            now=now,
        )
    if body.shipping_address is not None:
        checkout = await service.set_shipping_address(
            session,
            creator_id=creator_id,
            session_id=session_id,
            client_secret=client_secret,
            address=body.shipping_address.to_address(),
            now=now,
        )
    assert checkout is not None
    return session_out(checkout, settings=settings, now=now)


@router.post(
    "/checkout/sessions/{session_id}/confirm",
    response_model=SessionOut,
    responses={
        402: {"description": "The payment was declined or failed"},
        409: {"description": "The session expired, or its payment is still in progress"},
        422: {
            "description": "A field is invalid, the session ships physical items and "
            "has no shipping_address yet (`shipping-address-required`), or it subscribes "
            "and `consent` is not true (`consent-required`)"
        },
    },
)
async def confirm_session(
    session_id: str,
    body: ConfirmIn,
    request: Request,
    principal: PrincipalDep,
    creator_id: AnyCreatorDep,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
) -> Any:
    """Pay with a token. Safe to retry: a complete session is returned as it is, and a
    confirm that finds this session's payment still waiting for the gateway is a 409
    ``payment-in-progress`` (nothing is charged again; retry for the outcome).

    No transaction is open while the gateway is called: the attempt is recorded in a
    unit of work of its own, and ``session`` (the request's unit of work) is first used
    for the outcome, after the gateway answered."""
    if principal.kind == "publishable" and not body.client_secret:
        raise service.SessionNotFound(f"no checkout session {session_id!r}")
    client_secret = body.client_secret if principal.kind == "publishable" else None
    try:
        outcome = await service.confirm_session(
            request.app.state.database,
            request.app.state.gateway,
            creator_id=creator_id,
            session_id=session_id,
            payment_method=body.payment_method,
            client_secret=client_secret,
            customer_email=body.customer_email,
            default_fees=ledger.platform_fee_policy(settings),
            base_url=settings.base_url,
            resolve_after=now + settings.payment_resolve_after(),
            now=now,
            session=session,
            shipping_address=body.shipping_address.to_address() if body.shipping_address else None,
        )
    except service.SubscriptionCheckoutUnavailable:
        # A subscription-mode session, told apart by the one-time confirm's own locked read
        # of the session (which wrote nothing), rather than by a read of its own before
        # every confirm. Both confirms start the same way (the payment method checked, the
        # session locked, a complete session returned as it is), so the answer is the same.
        confirmer: service.SubscriptionConfirmer = request.app.state.subscription_confirmer
        outcome = await confirmer(
            request.app.state.database,
            request.app.state.gateway,
            creator_id=creator_id,
            session_id=session_id,
            payment_method=body.payment_method,
            client_secret=client_secret,
            customer_email=body.customer_email,
            consent=body.consent is True,
            ip_address=request.client.host if request.client else None,
            user_agent=request.headers.get("user-agent"),
            base_url=settings.base_url,
            now=now,
        )
    if outcome.error is not None:
        return problem_response(outcome.error, instance=f"/v1/checkout/sessions/{session_id}")
    return session_out(outcome.session, settings=settings, now=now)


@router.post(
    "/checkout/sessions/{session_id}/expire",
    response_model=SessionOut,
    responses={409: {"description": "The session is not open, or its payment is in progress"}},
)
async def expire_session(
    session_id: str,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
) -> SessionOut:
    """Expire an open session now: the stock it holds goes back on sale at once."""
    checkout = await service.cancel_session(
        session,
        creator_id=creator_id,
        session_id=session_id,
        base_url=settings.base_url,
        now=now,
    )
    return session_out(checkout, settings=settings, now=now)


@router.post("/checkout/links", status_code=201, response_model=LinkOut)
async def create_link(
    body: LinkCreate,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
) -> LinkOut:
    """A reusable URL; every visit opens a new session for these line items."""
    link = await service.create_link(
        session,
        creator_id=creator_id,
        lines=_lines(body.line_items),
        success_url=str(body.success_url) if body.success_url else None,
        now=now,
    )
    return link_out(link, base_url=settings.base_url)


@router.get("/checkout/links/{link_id}", response_model=LinkOut)
async def get_link(
    link_id: str, creator_id: SecretCreatorDep, session: SessionDep, settings: SettingsDep
) -> LinkOut:
    return link_out(
        await service.get_link(session, link_id=link_id, creator_id=creator_id),
        base_url=settings.base_url,
    )


@router.patch("/checkout/links/{link_id}", response_model=LinkOut)
async def update_link(
    link_id: str,
    body: LinkUpdate,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    settings: SettingsDep,
) -> LinkOut:
    """Deactivate (``active: false``) or reactivate a link."""
    link = await service.set_link_active(
        session, link_id=link_id, creator_id=creator_id, is_active=body.active
    )
    return link_out(link, base_url=settings.base_url)


@public_router.get(
    "/l/{link_id}",
    status_code=303,
    response_class=RedirectResponse,
    dependencies=[Depends(holds_stock)],
)
async def visit_link(
    link_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    embed: bool = False,
    origin: Annotated[str | None, Query(max_length=200)] = None,
) -> RedirectResponse:
    """Open a new session for a checkout link and send the buyer to its hosted page
    (``embed=true&origin=…``: the page in its embedded mode, for embed.js)."""
    checkout = await service.open_session_from_link(
        session,
        link_id=link_id,
        ttl=timedelta(seconds=settings.checkout_session_ttl_seconds),
        now=now,
        quoter=request.app.state.subscription_quoter,
    )
    query = "" if not embed else "?" + urlencode({"embed": "1", "origin": origin or ""})
    return RedirectResponse(f"{settings.base_url}/pay/{checkout.id}{query}", status_code=303)
