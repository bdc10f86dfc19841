"""HTTP routes for subscriptions, invoices and test clocks (docs/api.md).

Routes that charge or refund do so with no transaction open (ADR 0007): the change is
made in a unit of work of its own, the gateway is called, and the request's unit of work
(``session``) is first used to read the result.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, StrictBool

from stallholder.accounts.auth import (
    ADMIN_KEY_SCHEME,
    SECRET_KEY_SCHEME,
    CreatorKeyRequired,
    PrincipalDep,
    SecretCreatorDep,
)
from stallholder.accounts.service import PublishableKeyNotAllowed
from stallholder.billing import (
    cancellation,
    clocks,
    invoices,
    plan_change,
    renewal,
    subscriptions,
    tasks,
)
from stallholder.billing.models import Subscription
from stallholder.billing.schemas import (
    CancelIn,
    ConsentOut,
    InvoiceOut,
    PreviewIn,
    PriceChangeIn,
    SubscriptionCreate,
    SubscriptionOut,
    SubscriptionUpdate,
    TestClockAdvance,
    TestClockCreate,
    TestClockOut,
    consent_out,
    invoice_out,
    subscription_out,
    test_clock_out,
)
from stallholder.kit.db import Database
from stallholder.kit.errors import NotFound
from stallholder.kit.http import NowDep, RequestKeyDep, SessionDep, SettingsDep
from stallholder.kit.openapi import documents
from stallholder.kit.pagination import DEFAULT_LIMIT, MAX_LIMIT
from stallholder.kit.schemas import Input, ListOut
from stallholder.orders import service as orders

router = APIRouter(prefix="/v1", tags=["billing"])
LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
SubscriptionStatus = Literal[
    "incomplete", "trialing", "active", "past_due", "unpaid", "paused", "canceled"
]
InvoiceStatus = Literal["draft", "open", "paid", "void", "uncollectible"]


class ConsentMissing(NotFound):
    slug = "consent-not-found"
    title = "No consent was recorded for this subscription"


@documents(
    CreatorKeyRequired, PublishableKeyNotAllowed, accepts=(ADMIN_KEY_SCHEME, SECRET_KEY_SCHEME)
)
async def clock_owner(principal: PrincipalDep) -> str | None:
    """The admin (None: clocks every creator may use) or the creator of a secret key."""
    if principal.is_admin:
        return None
    if principal.creator_id is None:
        raise CreatorKeyRequired("use the admin key or a creator's secret key (sk_…)")
    if principal.kind != "secret":
        raise PublishableKeyNotAllowed("test clocks need the secret key (sk_…) or the admin key")
    return principal.creator_id


ClockOwnerDep = Annotated[str | None, Depends(clock_owner)]


def _database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def _read(session: SessionDep, *, creator_id: str, subscription_id: str) -> Subscription:
    subscription = await subscriptions.get_subscription(
        session, creator_id=creator_id, subscription_id=subscription_id
    )
    await session.refresh(subscription)
    return subscription


async def _begun(database: Database, *, request_key: str) -> tuple[str, str | None] | None:
    """The subscription a request with this Idempotency-Key created before it died, with
    its open invoice, so a retry charges that one instead of subscribing twice."""
    async with database.unit_of_work() as reading:
        found = await subscriptions.by_request_key(reading, request_key=request_key)
        if found is None:
            return None
        unpaid = await subscriptions.open_invoice(reading, subscription_id=found.id)
        return found.id, unpaid.id if unpaid is not None and unpaid.attempt_count == 0 else None


@router.post("/subscriptions", status_code=201, response_model=SubscriptionOut)
async def create_subscription(
    body: SubscriptionCreate,
    request: Request,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    request_key: RequestKeyDep,
) -> SubscriptionOut:
    """Subscribe a customer to recurring prices. The first invoice is charged at once,
    off-session, on ``default_payment_method`` (or the customer's default): the answer
    is ``active`` when it was paid, ``incomplete`` with the invoice open when it failed
    (the dunning schedule retries it), or ``trialing`` during a trial. ``consent``
    records the renewal terms the buyer agreed to."""
    database = _database(request)
    begun = None if request_key is None else await _begun(database, request_key=request_key)
    if begun is None:
        async with database.unit_of_work() as creating:
            created = await subscriptions.create_subscription(
                creating,
                creator_id=creator_id,
                customer_id=body.customer,
                items=[subscriptions.ItemRequest(item.price, item.quantity) for item in body.items],
                default_payment_method_id=body.default_payment_method,
                metadata=body.metadata,
                consent=None
                if body.consent is None
                else subscriptions.ConsentRequest(
                    terms=body.consent.terms,
                    ip_address=body.consent.ip_address,
                    user_agent=body.consent.user_agent,
                ),
                trial_days=body.trial_period_days,
                request_key=request_key,
                billing_day=settings.billing_day or None,
                now=now,
            )
            begun = (
                created.subscription.id,
                created.invoice.id if created.invoice is not None else None,
            )
    subscription_id, invoice_id = begun
    if invoice_id is not None:
        await renewal.charge_invoice(
            database,
            request.app.state.gateway,
            invoice_id=invoice_id,
            attempt=1,
            policy=tasks.policy_from(settings),
            now=now,
        )
    subscription = await _read(session, creator_id=creator_id, subscription_id=subscription_id)
    return subscription_out(subscription, now=now)


@router.get("/subscriptions/{subscription_id}", response_model=SubscriptionOut)
async def get_subscription(
    subscription_id: str, creator_id: SecretCreatorDep, session: SessionDep, now: NowDep
) -> SubscriptionOut:
    """The subscription with its current and next cycle (charge date, amount, cut-off and
    ship or release date)."""
    subscription = await subscriptions.get_subscription(
        session, creator_id=creator_id, subscription_id=subscription_id
    )
    return subscription_out(subscription, now=now)


@router.get("/subscriptions", response_model=ListOut)
async def list_subscriptions(
    creator_id: SecretCreatorDep,
    session: SessionDep,
    now: NowDep,
    customer: str | None = Query(default=None, max_length=40),
    status: SubscriptionStatus | None = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> ListOut:
    page = await subscriptions.list_subscriptions(
        session,
        creator_id=creator_id,
        customer_id=customer,
        status=status,
        limit=limit,
        starting_after=starting_after,
    )
    return ListOut(
        data=[subscription_out(found, now=now) for found in page.data], has_more=page.has_more
    )


@router.post("/subscriptions/{subscription_id}", response_model=SubscriptionOut)
async def update_subscription(
    subscription_id: str,
    body: SubscriptionUpdate,
    request: Request,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
) -> SubscriptionOut:
    """Change the default payment method (a failed invoice is retried with it at once),
    the items or the metadata (merged; "" removes a key). New items apply from the next
    period on, or now with ``proration_behavior: create_prorations``: the rest of the
    period is charged at once (a ``subscription_update`` invoice) or, for a cheaper plan,
    refunded, as ``POST …/preview`` shows."""
    requested = (
        None
        if body.items is None
        else [subscriptions.ItemRequest(item.price, item.quantity) for item in body.items]
    )
    if requested is not None and body.proration_behavior == "create_prorations":
        database = _database(request)
        async with database.unit_of_work() as changing:
            change = await plan_change.change_items_now(
                changing,
                creator_id=creator_id,
                subscription_id=subscription_id,
                items=requested,
                now=now,
            )
        if change.invoice_id is not None:
            await renewal.charge_invoice(
                database,
                request.app.state.gateway,
                invoice_id=change.invoice_id,
                attempt=1,
                policy=tasks.policy_from(settings),
                now=now,
            )
        if change.refund_order_id is not None:
            await orders.create_refund(
                database,
                request.app.state.gateway,
                creator_id=creator_id,
                order_id=change.refund_order_id,
                amount=change.refund_amount,
                reason="requested_by_customer",
                resolve_after=now + timedelta(seconds=settings.payment_resolve_after_seconds),
                now=now,
                # The refund's own key (64 characters, as request keys are).
                request_key=hashlib.sha256(
                    f"plan_change:{subscription_id}:{now.isoformat()}".encode()
                ).hexdigest(),
            )
        if body.default_payment_method is None and body.metadata is None:
            subscription = await _read(
                session, creator_id=creator_id, subscription_id=subscription_id
            )
            return subscription_out(subscription, now=now)
        requested = None
    subscription = await subscriptions.update_subscription(
        session,
        creator_id=creator_id,
        subscription_id=subscription_id,
        default_payment_method_id=body.default_payment_method,
        items=requested,
        metadata=body.metadata,
        now=now,
    )
    return subscription_out(subscription, now=now)


@router.post("/subscriptions/{subscription_id}/cancel", response_model=SubscriptionOut)
async def cancel_subscription(
    subscription_id: str,
    body: CancelIn,
    request: Request,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
) -> SubscriptionOut:
    """Cancel at the end of the period (default) or at once (``at_period_end: false``;
    for a customer in the EU or UK, within 14 days of the signup the unused part of the
    period is refunded: the right of withdrawal). The buyer gets a cancellation receipt;
    the subscription shows what ends when."""
    database = _database(request)
    async with database.unit_of_work() as canceling:
        done = await cancellation.cancel(
            canceling,
            creator_id=creator_id,
            subscription_id=subscription_id,
            at_period_end=body.at_period_end,
            reason=body.reason,
            now=now,
        )
    await cancellation.refund_cancellation(
        database,
        request.app.state.gateway,
        cancellation=done,
        resolve_after=now + timedelta(seconds=settings.payment_resolve_after_seconds),
        now=now,
    )
    subscription = await _read(session, creator_id=creator_id, subscription_id=subscription_id)
    return subscription_out(subscription, now=now)


@router.post("/subscriptions/{subscription_id}/undo_cancel", response_model=SubscriptionOut)
async def undo_cancel(
    subscription_id: str, creator_id: SecretCreatorDep, session: SessionDep, now: NowDep
) -> SubscriptionOut:
    """Keep a subscription set to cancel at the period's end."""
    subscription = await cancellation.undo_cancellation(
        session, creator_id=creator_id, subscription_id=subscription_id, now=now
    )
    return subscription_out(subscription, now=now)


@router.post("/subscriptions/{subscription_id}/pause", response_model=SubscriptionOut)
async def pause_subscription(
    subscription_id: str, creator_id: SecretCreatorDep, session: SessionDep, now: NowDep
) -> SubscriptionOut:
    """Pause: no invoices until resumed; the billing dates stay on their calendar."""
    subscription = await cancellation.pause(
        session, creator_id=creator_id, subscription_id=subscription_id, now=now
    )
    return subscription_out(subscription, now=now)


@router.post("/subscriptions/{subscription_id}/resume", response_model=SubscriptionOut)
async def resume_subscription(
    subscription_id: str, creator_id: SecretCreatorDep, session: SessionDep, now: NowDep
) -> SubscriptionOut:
    """Resume a paused subscription; the next invoice is at the next period's start."""
    subscription = await cancellation.resume(
        session, creator_id=creator_id, subscription_id=subscription_id, now=now
    )
    return subscription_out(subscription, now=now)


class SkipIn(Input):
    skip: StrictBool = True


@router.post("/subscriptions/{subscription_id}/skip", response_model=SubscriptionOut)
async def skip_cycle(
    subscription_id: str,
    body: SkipIn,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    now: NowDep,
) -> SubscriptionOut:
    """Skip the next cycle (``skip: false`` takes it back): no charge, no delivery."""
    subscription = await cancellation.skip_next_cycle(
        session, creator_id=creator_id, subscription_id=subscription_id, skip=body.skip, now=now
    )
    return subscription_out(subscription, now=now)


class PreviewOut(BaseModel):
    object: Literal["subscription_change_preview"] = "subscription_change_preview"
    subscription: str
    currency: str
    current_amount: int
    new_amount: int
    proration_date: datetime
    period_start: datetime
    period_end: datetime
    # Change now: credit the unused time at the old amount, charge it at the new.
    now_credit: int
    now_charge: int
    now_amount_due: int
    # Or change from the next period: nothing now, the new amount from then on.
    next_period_start: datetime
    next_period_amount: int


@router.post("/subscriptions/{subscription_id}/preview", response_model=PreviewOut)
async def preview_change(
    subscription_id: str,
    body: PreviewIn,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    now: NowDep,
) -> PreviewOut:
    """What changing to ``items`` costs now (prorated by the second) or from the next
    period on. Changes nothing."""
    subscription = await subscriptions.get_subscription(
        session, creator_id=creator_id, subscription_id=subscription_id
    )
    preview = await cancellation.preview_change(
        session,
        creator_id=creator_id,
        subscription_id=subscription_id,
        items=[subscriptions.ItemRequest(item.price, item.quantity) for item in body.items],
        proration_date=body.proration_date,
        now=now,
    )
    change = preview.proration
    return PreviewOut(
        subscription=subscription_id,
        currency=subscription.currency,
        current_amount=preview.current_amount,
        new_amount=preview.new_amount,
        proration_date=change.at,
        period_start=change.period_start,
        period_end=change.period_end,
        now_credit=change.credit,
        now_charge=change.charge,
        now_amount_due=change.amount_due,
        next_period_start=preview.next_period_start,
        next_period_amount=preview.new_amount,
    )


@router.post("/subscriptions/{subscription_id}/price_change", response_model=SubscriptionOut)
async def schedule_price_change(
    subscription_id: str,
    body: PriceChangeIn,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
) -> SubscriptionOut:
    """Move the subscription to ``items`` from the first renewal on or after
    ``effective_at``. The buyer is emailed 30 days ahead (at once when sooner); less than
    ``STALLHOLDER_BILLING_PRICE_CHANGE_NOTICE_DAYS`` (7) ahead is refused."""
    subscription = await subscriptions.schedule_price_change(
        session,
        creator_id=creator_id,
        subscription_id=subscription_id,
        items=[subscriptions.ItemRequest(item.price, item.quantity) for item in body.items],
        effective_at=body.effective_at,
        notice_days=settings.billing_price_change_notice_days,
        now=now,
    )
    return subscription_out(subscription, now=now)


@router.get("/subscriptions/{subscription_id}/consent", response_model=ConsentOut)
async def get_consent(
    subscription_id: str, creator_id: SecretCreatorDep, session: SessionDep
) -> ConsentOut:
    """The consent recorded at signup: the renewal terms shown, when, IP and user agent."""
    consent = await subscriptions.get_consent(
        session, creator_id=creator_id, subscription_id=subscription_id
    )
    if consent is None:
        raise ConsentMissing(f"subscription {subscription_id} was created without a consent")
    return consent_out(consent)


@router.get("/invoices/{invoice_id}", response_model=InvoiceOut)
async def get_invoice(
    invoice_id: str, creator_id: SecretCreatorDep, session: SessionDep
) -> InvoiceOut:
    return invoice_out(
        await invoices.get_invoice(session, creator_id=creator_id, invoice_id=invoice_id)
    )


@router.get("/invoices", response_model=ListOut)
async def list_invoices(
    creator_id: SecretCreatorDep,
    session: SessionDep,
    subscription: str | None = Query(default=None, max_length=40),
    customer: str | None = Query(default=None, max_length=40),
    status: InvoiceStatus | None = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> ListOut:
    page = await invoices.list_invoices(
        session,
        creator_id=creator_id,
        subscription_id=subscription,
        customer_id=customer,
        status=status,
        limit=limit,
        starting_after=starting_after,
    )
    return ListOut(data=[invoice_out(found) for found in page.data], has_more=page.has_more)


@router.post("/test_clocks", status_code=201, response_model=TestClockOut)
async def create_test_clock(
    body: TestClockCreate, owner: ClockOwnerDep, session: SessionDep, now: NowDep
) -> TestClockOut:
    """A test clock at ``frozen_time``. Made with the admin key, every creator may use
    it; made with a secret key, only that creator."""
    clock = await clocks.create_clock(
        session, creator_id=owner, frozen_time=body.frozen_time, name=body.name, now=now
    )
    return test_clock_out(clock)


@router.get("/test_clocks/{clock_id}", response_model=TestClockOut)
async def get_test_clock(clock_id: str, owner: ClockOwnerDep, session: SessionDep) -> TestClockOut:
    return test_clock_out(await clocks.get_clock(session, creator_id=owner, clock_id=clock_id))


@router.get("/test_clocks", response_model=ListOut)
async def list_test_clocks(
    owner: ClockOwnerDep,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> ListOut:
    page = await clocks.list_clocks(
        session, creator_id=owner, limit=limit, starting_after=starting_after
    )
    return ListOut(data=[test_clock_out(clock) for clock in page.data], has_more=page.has_more)


@router.post("/test_clocks/{clock_id}/advance", response_model=TestClockOut)
async def advance_test_clock(
    clock_id: str,
    body: TestClockAdvance,
    request: Request,
    owner: ClockOwnerDep,
    session: SessionDep,
    settings: SettingsDep,
) -> TestClockOut:
    """Move the clock forward to ``frozen_time`` and run everything that falls due on the
    way (renewals, charges and retries, reminders; emails are queued). Returns when done."""
    await clocks.advance(
        _database(request),
        settings=settings,
        gateway=request.app.state.gateway,
        creator_id=owner,
        clock_id=clock_id,
        frozen_time=body.frozen_time,
    )
    return test_clock_out(await clocks.get_clock(session, creator_id=owner, clock_id=clock_id))
