"""The buyer portal (``/portal``): one person's subscriptions, orders and receipts across
every creator they buy from (docs/portal.md). Server-rendered, no JavaScript; every form
carries the session's CSRF token. Sign-in is in ``portal_auth.py``.

Each action calls the same billing service the API does, with the subscription's
creator, after checking the subscription is the signed-in buyer's. Actions answer with a
redirect to a page (post, redirect, get), carrying a one-line notice in the session.

Cancelling takes two clicks: **Cancel** on the list opens the one confirmation page (what
ends when, at most one retention offer, and a "Cancel subscription" button as prominent
as the offer); **Cancel subscription** cancels and shows the receipt, which is emailed too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_datetime
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts import service as accounts
from stallholder.accounts.models import Creator, Customer
from stallholder.billing import buyers, cancellation, renewal, retention, subscriptions
from stallholder.billing.models import Subscription
from stallholder.billing.schemas import subscription_out
from stallholder.billing.tasks import policy_from
from stallholder.catalog import service as catalog
from stallholder.kit.db import Database
from stallholder.kit.errors import DomainError
from stallholder.kit.http import NowDep, SessionDep, SettingsDep, settings_of
from stallholder.kit.money import Money
from stallholder.orders import downloads
from stallholder.orders import service as orders
from stallholder.payments import methods
from stallholder.payments.gateway import CardSetup
from stallholder.web.portal_auth import sign_in_redirect, signed_in_buyer
from stallholder.web.security import CsrfProtected
from stallholder.web.templating import templates

router = APIRouter(include_in_schema=False, dependencies=[CsrfProtected])

LOCALE = "en_US"
NOTICE_KEY = "notice"
# Cards the sandbox can save, for the payment-update page's picker (docs/api.md).
SANDBOX_CARDS = [
    ("tok_visa", "Visa — every charge succeeds"),
    ("tok_chargeCustomerFail", "Card that saves, then every charge is declined"),
    ("tok_chargeDeclined", "Card that is declined when saved"),
]
_INTERVALS = {"day": "day", "week": "week", "month": "month", "year": "year"}


def _database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def _notice(request: Request, text: str) -> None:
    request.session[NOTICE_KEY] = text


def _take_notice(request: Request) -> str | None:
    text = request.session.pop(NOTICE_KEY, None)
    return text if isinstance(text, str) else None


def _money(amount: int, currency: str) -> str:
    return Money(amount, currency).format(LOCALE)


def _day(instant: datetime | None, zone: str) -> str | None:
    """A date on the buyer's calendar: "May 1, 2026"."""
    if instant is None:
        return None
    return str(format_date(instant.astimezone(ZoneInfo(zone)).date(), "long", locale=LOCALE))


def _moment(instant: datetime, zone: str) -> str:
    """A time on the buyer's clock: "May 1, 2026, 14:00 (Europe/Berlin)"."""
    shown = format_datetime(instant, "MMMM d, y, HH:mm", tzinfo=ZoneInfo(zone), locale=LOCALE)
    return f"{shown} ({zone})"


def _every(subscription: Subscription) -> str:
    unit = _INTERVALS.get(subscription.interval, subscription.interval)
    if subscription.interval_count == 1:
        return f"every {unit}"
    return f"every {subscription.interval_count} {unit}s"


def _status(subscription: Subscription, zone: str) -> str:
    if subscription.status == "canceled":
        return f"Ended on {_day(subscription.ended_at, zone)}"
    if subscription.cancel_at is not None:
        return f"Cancels on {_day(subscription.cancel_at, zone)}"
    return {
        "active": "Active",
        "trialing": f"Free trial until {_day(subscription.trial_end, zone)}",
        "past_due": "Payment failed — update your card",
        "unpaid": "Unpaid — update your card",
        "incomplete": "Waiting for the first payment",
        "paused": "Paused",
    }.get(subscription.status, subscription.status)


async def _subscription_view(
    session: AsyncSession,
    subscription: Subscription,
    *,
    creator: Creator,
    customer: Customer,
    now: datetime,
) -> dict[str, Any]:
    """What a subscription's card on the list and its pages show, in the buyer's zone:
    the products by name (an item's own description is the price's nickname)."""
    names = [
        (
            await catalog.get_product(
                session, creator_id=subscription.creator_id, product_id=item.product_id
            )
        ).name
        for item in subscription.items
    ]
    zone = customer.time_zone
    out = subscription_out(subscription, now=now)
    currency = subscription.currency
    is_running = subscription.status not in ("canceled",) and subscription.cancel_at is None
    next_cycle = out.next_cycle
    discount = out.discount
    return {
        "id": subscription.id,
        "merchant": creator.display_name,
        "description": ", ".join(
            name if item.quantity == 1 else f"{item.quantity} × {name}"
            for item, name in zip(subscription.items, names, strict=True)
        ),
        "price": f"{_money(out.amount, currency)} {_every(subscription)}",
        "status": subscription.status,
        "status_label": _status(subscription, zone),
        "next": None
        if next_cycle is None or subscription.status == "canceled"
        else {
            "charge_date": _day(next_cycle.charge_date, zone),
            "amount": _money(next_cycle.amount, currency),
            "cutoff": _moment(next_cycle.cutoff, zone),
            "ships_on": str(format_date(next_cycle.ships_on, "long", locale=LOCALE)),
            "is_skipped": subscription.skip_period_index == subscription.current_period_index + 1,
        },
        "has_calendar": subscription.delivery_calendar is not None,
        "discount": None
        if discount is None
        else f"{discount.percent_off}% off your next "
        + (
            "payment" if discount.cycles_remaining == 1 else f"{discount.cycles_remaining} payments"
        ),
        "ends_on": _day(subscription.cancel_at, zone),
        "can_skip": is_running and subscription.status in ("active", "trialing"),
        "can_pause": is_running and subscription.status in ("active", "trialing", "past_due"),
        "can_resume": subscription.status == "paused" and subscription.cancel_at is None,
        "can_keep": subscription.status != "canceled" and subscription.cancel_at is not None,
        "can_cancel": is_running,
        "can_update_card": subscription.status != "canceled",
        "needs_card": subscription.status in ("past_due", "unpaid"),
    }


async def _people(session: AsyncSession, subscription: Subscription) -> tuple[Creator, Customer]:
    creator = await accounts.get_creator(session, subscription.creator_id)
    customer = await accounts.get_customer(
        session, creator_id=subscription.creator_id, customer_id=subscription.customer_id
    )
    return creator, customer


@router.get("/portal", response_class=HTMLResponse)
async def home(request: Request, session: SessionDep, now: NowDep) -> Response:
    """All of the buyer's subscriptions, with every creator, and their orders."""
    buyer_id = signed_in_buyer(request)
    if buyer_id is None:
        return sign_in_redirect(request)
    buyer = await accounts.get_buyer(session, buyer_id)
    customers = {c.id: c for c in await accounts.customers_of_buyer(session, buyer_id=buyer_id)}
    creators = await accounts.creators_by_id(
        session, sorted({c.creator_id for c in customers.values()})
    )
    found = await buyers.subscriptions_of_buyer(session, buyer_id=buyer_id)
    views = [
        await _subscription_view(
            session,
            subscription,
            creator=creators[subscription.creator_id],
            customer=customers[subscription.customer_id],
            now=now,
        )
        for subscription in found
    ]
    bought = await orders.orders_of_customers(session, customer_ids=list(customers))
    order_views: list[dict[str, Any]] = [
        {
            "url": f"/portal/orders/{order.id}",
            "at": order.created_at,
            "merchant": creators[order.creator_id].display_name,
            "date": _day(order.created_at, customers[order.customer_id].time_zone),
            "number": order.receipt_number,
            "total": _money(order.amount_total, order.currency),
            "status": order.status.replace("_", " "),
        }
        for order in bought
    ]
    # Renewals paid from the wallet make no order (ADR 0016); they are receipts too.
    order_views += [
        {
            "url": f"/portal/invoices/{invoice.id}",
            "at": invoice.paid_at or invoice.created_at,
            "merchant": creators[invoice.creator_id].display_name,
            "date": _day(
                invoice.paid_at or invoice.created_at, customers[invoice.customer_id].time_zone
            ),
            "number": f"{invoice.id} · paid from your wallet",
            "total": _money(invoice.amount_paid, invoice.currency),
            "status": "paid",
        }
        for invoice in await buyers.wallet_paid_invoices(session, buyer_id=buyer_id)
    ]
    order_views.sort(key=lambda row: row["at"], reverse=True)
    return templates.TemplateResponse(
        request,
        "portal.html",
        {
            "email": buyer.email_key,
            "notice": _take_notice(request),
            "subscriptions": views,
            "orders": order_views,
        },
    )


async def _mine(
    request: Request, session: AsyncSession, subscription_id: str
) -> Subscription | None:
    buyer_id = signed_in_buyer(request)
    if buyer_id is None:
        return None
    return await buyers.subscription_of_buyer(
        session, buyer_id=buyer_id, subscription_id=subscription_id
    )


async def _email(request: Request, session: AsyncSession) -> str:
    buyer_id = signed_in_buyer(request)
    assert buyer_id is not None
    return (await accounts.get_buyer(session, buyer_id)).email_key


@router.post("/portal/subscriptions/{subscription_id}/skip", response_class=HTMLResponse)
async def skip(
    subscription_id: str,
    request: Request,
    session: SessionDep,
    now: NowDep,
    skip: Annotated[str, Form(max_length=5)] = "yes",
) -> Response:
    """Skip the next cycle (``skip=no`` takes the skip back)."""
    subscription = await _mine(request, session, subscription_id)
    if subscription is None:
        return sign_in_redirect(request)
    changed = await cancellation.skip_next_cycle(
        session,
        creator_id=subscription.creator_id,
        subscription_id=subscription_id,
        skip=skip == "yes",
        now=now,
    )
    creator, customer = await _people(session, changed)
    view = await _subscription_view(session, changed, creator=creator, customer=customer, now=now)
    if skip == "yes":
        _notice(
            request,
            f"Skipped: {creator.display_name} will not charge you on "
            f"{view['next']['charge_date'] if view['next'] else 'the next charge date'}.",
        )
    else:
        _notice(request, f"The next {creator.display_name} cycle is back on.")
    return RedirectResponse(f"/portal#{subscription_id}", status_code=303)


@router.post("/portal/subscriptions/{subscription_id}/pause", response_class=HTMLResponse)
async def pause(
    subscription_id: str, request: Request, session: SessionDep, now: NowDep
) -> Response:
    subscription = await _mine(request, session, subscription_id)
    if subscription is None:
        return sign_in_redirect(request)
    await cancellation.pause(
        session, creator_id=subscription.creator_id, subscription_id=subscription_id, now=now
    )
    _notice(request, "Paused: no charges and no deliveries until you resume.")
    return RedirectResponse(f"/portal#{subscription_id}", status_code=303)


@router.post("/portal/subscriptions/{subscription_id}/resume", response_class=HTMLResponse)
async def resume(
    subscription_id: str, request: Request, session: SessionDep, now: NowDep
) -> Response:
    subscription = await _mine(request, session, subscription_id)
    if subscription is None:
        return sign_in_redirect(request)
    await cancellation.resume(
        session, creator_id=subscription.creator_id, subscription_id=subscription_id, now=now
    )
    _notice(request, "Resumed: your subscription bills again from its next charge date.")
    return RedirectResponse(f"/portal#{subscription_id}", status_code=303)


@router.post("/portal/subscriptions/{subscription_id}/keep", response_class=HTMLResponse)
async def keep(
    subscription_id: str, request: Request, session: SessionDep, now: NowDep
) -> Response:
    """Undo a cancellation that has not taken effect yet."""
    subscription = await _mine(request, session, subscription_id)
    if subscription is None:
        return sign_in_redirect(request)
    await cancellation.undo_cancellation(
        session, creator_id=subscription.creator_id, subscription_id=subscription_id, now=now
    )
    _notice(request, "Kept: your subscription goes on as before.")
    return RedirectResponse(f"/portal#{subscription_id}", status_code=303)


# Cancelling -----------------------------------------------------------------------------


@router.get("/portal/subscriptions/{subscription_id}/cancel", response_class=HTMLResponse)
async def confirm_cancel(
    subscription_id: str, request: Request, session: SessionDep, now: NowDep
) -> Response:
    """The one confirmation page: what ends when, at most one retention offer, and the
    "Cancel subscription" button."""
    subscription = await _mine(request, session, subscription_id)
    if subscription is None:
        return sign_in_redirect(request)
    if subscription.status == "canceled" or subscription.cancel_at is not None:
        return RedirectResponse(f"/portal/subscriptions/{subscription_id}/canceled", 303)
    creator, customer = await _people(session, subscription)
    at = await subscriptions.billing_now(session, test_clock_id=subscription.test_clock_id, now=now)
    offer = await retention.offer_for(session, subscription)
    refund = await cancellation.withdrawal_refund(session, subscription, at=at)
    return templates.TemplateResponse(
        request,
        "portal_cancel.html",
        {
            "email": await _email(request, session),
            "subscription": await _subscription_view(
                session, subscription, creator=creator, customer=customer, now=now
            ),
            "ends_on": _day(subscription.current_period_end, customer.time_zone),
            # A subscription whose first payment never went through ends at once.
            "ends_at_once": subscription.status == "incomplete",
            "offer": None if offer is None else retention.describe(offer),
            "offer_kind": None if offer is None else offer.kind,
            "withdrawal_refund": None if refund is None else _money(refund, subscription.currency),
        },
    )


@router.post("/portal/subscriptions/{subscription_id}/cancel", response_class=HTMLResponse)
async def cancel(
    subscription_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    when: Annotated[str, Form(max_length=12)] = "period_end",
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    """Cancel, then show the receipt. At once (with the pro-rata refund) only when the
    buyer has the right of withdrawal and chose it; otherwise at the period's end."""
    buyer_id = signed_in_buyer(request)
    if buyer_id is None:
        return sign_in_redirect(request)
    database = _database(request)
    async with database.unit_of_work() as canceling:
        subscription = await buyers.subscription_of_buyer(
            canceling, buyer_id=buyer_id, subscription_id=subscription_id
        )
        at = await subscriptions.billing_now(
            canceling, test_clock_id=subscription.test_clock_id, now=now
        )
        at_once = (
            when == "now"
            and await cancellation.withdrawal_refund(canceling, subscription, at=at) is not None
        )
        await retention.decline(canceling, subscription, at=at)
        done = await cancellation.cancel(
            canceling,
            creator_id=subscription.creator_id,
            subscription_id=subscription_id,
            at_period_end=not at_once,
            reason=reason.strip() or None,
            now=now,
        )
    await cancellation.refund_cancellation(
        database,
        request.app.state.gateway,
        cancellation=done,
        resolve_after=now + settings.payment_resolve_after(),
        now=now,
    )
    return RedirectResponse(f"/portal/subscriptions/{subscription_id}/canceled", 303)


@router.get("/portal/subscriptions/{subscription_id}/canceled", response_class=HTMLResponse)
async def cancellation_receipt(
    subscription_id: str, request: Request, session: SessionDep, now: NowDep
) -> Response:
    """The cancellation's receipt: when it was asked, what ends when, any refund."""
    subscription = await _mine(request, session, subscription_id)
    if subscription is None:
        return sign_in_redirect(request)
    if subscription.cancel_requested_at is None and subscription.status != "canceled":
        return RedirectResponse(f"/portal#{subscription_id}", status_code=303)
    creator, customer = await _people(session, subscription)
    zone = customer.time_zone
    return templates.TemplateResponse(
        request,
        "portal_canceled.html",
        {
            "email": await _email(request, session),
            "merchant": creator.display_name,
            "subscription": await _subscription_view(
                session, subscription, creator=creator, customer=customer, now=now
            ),
            "requested_on": _day(subscription.cancel_requested_at, zone),
            "ends_on": _day(subscription.cancel_at, zone)
            if subscription.cancel_at_period_end
            else None,
            "ended_on": _day(subscription.ended_at, zone),
            "refund": _money(subscription.refunded_amount, subscription.currency)
            if subscription.refunded_amount
            else None,
            "receipt_to": customer.email,
            "reason": subscription.cancellation_reason,
        },
    )


@router.post("/portal/subscriptions/{subscription_id}/retention-offer", response_class=HTMLResponse)
async def accept_offer(
    subscription_id: str, request: Request, session: SessionDep, now: NowDep
) -> Response:
    """Take the retention offer instead of canceling."""
    subscription = await _mine(request, session, subscription_id)
    if subscription is None:
        return sign_in_redirect(request)
    _, offer = await retention.accept(
        session, creator_id=subscription.creator_id, subscription_id=subscription_id, now=now
    )
    if offer.kind == "pause":
        _notice(request, "Paused instead: no charges and no deliveries until you resume.")
    else:
        _notice(request, f"Thank you for staying: {retention.describe(offer).split(' if ')[0]}.")
    return RedirectResponse(f"/portal#{subscription_id}", status_code=303)


# The payment method ------------------------------------------------------------------------


async def _payment_page(
    request: Request,
    session: AsyncSession,
    subscription: Subscription,
    *,
    now: datetime,
    error: str | None = None,
    status_code: int = 200,
    setup: CardSetup | None = None,
) -> Response:
    """The payment-update page; with ``setup`` (Stripe), the page confirms that card
    setup in the buyer's browser (3-D Secure when the bank asks) and posts it back."""
    creator, customer = await _people(session, subscription)
    page = await methods.list_payment_methods(
        session,
        creator_id=subscription.creator_id,
        customer_id=subscription.customer_id,
        limit=20,
        starting_after=None,
    )
    failed = await buyers.failed_invoice(session, subscription_id=subscription.id)
    cards = [
        {
            "id": view.method.id,
            "label": f"Card saved {_day(view.method.created_at, customer.time_zone)}"
            + (f" ({view.method.gateway_reference})" if view.method.gateway == "sandbox" else ""),
            "is_current": view.method.id == subscription.default_payment_method_id,
        }
        for view in page.data
        if view.is_granted
    ]
    return templates.TemplateResponse(
        request,
        "portal_payment.html",
        {
            "email": await _email(request, session),
            "subscription": await _subscription_view(
                session, subscription, creator=creator, customer=customer, now=now
            ),
            "cards": cards,
            "failed": None
            if failed is None
            else {
                "amount": _money(failed.amount_due, failed.currency),
                "reason": failed.last_failure,
            },
            "is_sandbox": request.app.state.gateway.name == "sandbox",
            "uses_stripe": request.app.state.gateway.name == "stripe",
            # Stripe: the Payment Element in deferred setup mode makes the PaymentMethod
            # in the buyer's browser; the form posts its ``pm_`` id as ``token``, the
            # server makes a SetupIntent for it, and the page confirms that with Stripe.js
            # and posts its ``seti_`` id as ``setup_intent``.
            "stripe_publishable_key": settings_of(request).stripe_publishable_key,
            "currency": subscription.currency,
            "tokens": SANDBOX_CARDS,
            "error": error,
            "setup": None
            if setup is None
            else {"secret": setup.action_secret, "payment_method": setup.payment_method},
        },
        status_code=status_code,
    )


@router.get("/portal/subscriptions/{subscription_id}/payment-method", response_class=HTMLResponse)
async def payment_method_form(
    subscription_id: str, request: Request, session: SessionDep, now: NowDep
) -> Response:
    """The payment-update page (dunning emails link here): add a card, or choose a saved
    one; a failed payment is retried on it at once."""
    subscription = await _mine(request, session, subscription_id)
    if subscription is None:
        return sign_in_redirect(request)
    return await _payment_page(request, session, subscription, now=now)


@router.post("/portal/subscriptions/{subscription_id}/payment-method", response_class=HTMLResponse)
async def update_payment_method(
    subscription_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    token: Annotated[str, Form(max_length=100)] = "",
    payment_method: Annotated[str, Form(max_length=40)] = "",
    setup_intent: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """Save a new card or choose a saved one (``payment_method``) as the subscription's,
    then retry a failed payment on it at once. Each step is short and no transaction is
    open during a gateway call (ADR 0007).

    A new card is set up with the buyer present, so their bank can ask them to confirm it
    (3-D Secure) before renewals charge it without them: ``token`` (a sandbox token, or
    with Stripe the ``pm_`` Stripe.js created) begins a card setup. The sandbox's succeeds
    at once and is saved; Stripe's SetupIntent comes back to the page, which confirms it
    with Stripe.js and posts its id as ``setup_intent``; that is saved only when it is this
    customer's and succeeded."""
    buyer_id = signed_in_buyer(request)
    if buyer_id is None:
        return sign_in_redirect(request)
    database = _database(request)
    gateway = request.app.state.gateway
    async with database.unit_of_work() as reading:
        subscription = await buyers.subscription_of_buyer(
            reading, buyer_id=buyer_id, subscription_id=subscription_id
        )
        creator_id, customer_id = subscription.creator_id, subscription.customer_id
    retry: tuple[str, int] | None = None
    try:
        if setup_intent or token:
            reference = setup_intent
            if not reference:
                setup = await methods.begin_card_setup(
                    database, gateway, creator_id=creator_id, customer_id=customer_id, token=token
                )
                if setup.status == "requires_action":
                    current = await buyers.subscription_of_buyer(
                        session, buyer_id=buyer_id, subscription_id=subscription_id
                    )
                    return await _payment_page(request, session, current, now=now, setup=setup)
                reference = setup.reference
            saved = await methods.finish_card_setup(
                database,
                gateway,
                creator_id=creator_id,
                customer_id=customer_id,
                reference=reference,
                now=now,
            )
            chosen = saved.method.id
        elif payment_method:
            chosen = payment_method
        else:
            raise NothingChosen("choose a saved card or add a new one")
        async with database.unit_of_work() as changing:
            await subscriptions.update_subscription(
                changing,
                creator_id=creator_id,
                subscription_id=subscription_id,
                default_payment_method_id=chosen,
                now=now,
            )
            failed = await buyers.failed_invoice(changing, subscription_id=subscription_id)
            if failed is not None and failed.next_payment_attempt is not None:
                retry = (failed.id, failed.attempt_count + 1)
    except DomainError as error:
        async with database.unit_of_work() as reading:
            subscription = await buyers.subscription_of_buyer(
                reading, buyer_id=buyer_id, subscription_id=subscription_id
            )
            return await _payment_page(
                request,
                reading,
                subscription,
                now=now,
                error=error.detail,
                status_code=error.status,
            )
    if retry is not None:
        # The retry the update scheduled, made now so the page can say how it went; the
        # worker finds the attempt made and does nothing more (ADR 0010).
        invoice_id, attempt = retry
        await renewal.charge_invoice(
            database,
            gateway,
            invoice_id=invoice_id,
            attempt=attempt,
            policy=policy_from(settings),
            now=now,
        )
        refreshed = await buyers.subscription_of_buyer(
            session, buyer_id=buyer_id, subscription_id=subscription_id
        )
        if refreshed.status in ("past_due", "unpaid"):
            return await _payment_page(
                request,
                session,
                refreshed,
                now=now,
                error="The payment was tried again on this card and did not go through; "
                "try another card.",
                status_code=402,
            )
        _notice(request, "Card updated and your payment went through. Thank you!")
    else:
        _notice(request, "Card updated: your next payments will be charged to it.")
    return RedirectResponse(f"/portal#{subscription_id}", status_code=303)


class NothingChosen(DomainError):
    status = 422
    slug = "payment-method-required"
    title = "Choose a card"


# Orders -----------------------------------------------------------------------------------


@router.get("/portal/orders/{order_id}", response_class=HTMLResponse)
async def receipt(order_id: str, request: Request, session: SessionDep, now: NowDep) -> Response:
    """An order's receipt, as the buyer's email had it."""
    buyer_id = signed_in_buyer(request)
    if buyer_id is None:
        return sign_in_redirect(request)
    customers = {c.id: c for c in await accounts.customers_of_buyer(session, buyer_id=buyer_id)}
    order = await orders.order_of_customers(
        session, customer_ids=list(customers), order_id=order_id
    )
    creator = await accounts.get_creator(session, order.creator_id)
    currency = order.currency
    # Fresh links each time: an expired link in the email is never a dead end here.
    found = await downloads.for_order(
        session, order=order, links=request.app.state.download_links, now=now
    )
    return templates.TemplateResponse(
        request,
        "portal_receipt.html",
        {
            "deliverables": None if found.is_empty else found,
            "email": await _email(request, session),
            "merchant": creator.display_name,
            "number": order.receipt_number,
            "date": _day(order.created_at, customers[order.customer_id].time_zone),
            "lines": [
                {
                    "description": line.description,
                    "quantity": line.quantity,
                    "amount": _money(line.amount_total, currency),
                }
                for line in order.line_items
            ],
            "subtotal": _money(order.amount_subtotal, currency),
            "shipping": _money(order.amount_shipping, currency) if order.amount_shipping else None,
            "total": _money(order.amount_total, currency),
            "refunded": _money(order.amount_refunded, currency) if order.amount_refunded else None,
            "status": order.status.replace("_", " "),
        },
    )


@router.get("/portal/invoices/{invoice_id}", response_class=HTMLResponse)
async def invoice_receipt(invoice_id: str, request: Request, session: SessionDep) -> Response:
    """The receipt of an invoice paid from the wallet (it has no order)."""
    buyer_id = signed_in_buyer(request)
    if buyer_id is None:
        return sign_in_redirect(request)
    invoice = await buyers.invoice_of_buyer(session, buyer_id=buyer_id, invoice_id=invoice_id)
    creator = await accounts.get_creator(session, invoice.creator_id)
    customer = await accounts.get_customer(
        session, creator_id=invoice.creator_id, customer_id=invoice.customer_id
    )
    currency = invoice.currency
    zone = customer.time_zone
    return templates.TemplateResponse(
        request,
        "portal_receipt.html",
        {
            "email": await _email(request, session),
            "merchant": creator.display_name,
            "number": invoice.id,
            "date": _day(invoice.paid_at or invoice.created_at, zone),
            "lines": [
                {
                    "description": f"{line.description} ({_day(line.period_start, zone)} to "
                    f"{_day(line.period_end, zone)})",
                    "quantity": line.quantity,
                    "amount": _money(line.amount, currency),
                }
                for line in invoice.lines
            ],
            "subtotal": _money(invoice.amount_due, currency),
            "shipping": None,
            "total": _money(invoice.amount_paid, currency),
            "refunded": None,
            "status": invoice.status if invoice.status != "paid" else "paid from your wallet",
        },
    )
