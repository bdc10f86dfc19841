"""Typed keyword-only factories over the services (Polar's random_objects style)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts import service as accounts
from stallholder.accounts.models import Creator
from stallholder.billing import consolidation, renewal, subscriptions, tasks
from stallholder.catalog import service as catalog
from stallholder.catalog.models import Price
from stallholder.checkout import service as checkout
from stallholder.checkout.models import CheckoutSession
from stallholder.kit.db import Database
from stallholder.payments import methods
from stallholder.payments.gateway import Gateway
from stallholder.settings import Settings


async def create_creator(
    session: AsyncSession,
    *,
    now: datetime,
    name: str = "Kiln & Clay",
    platform_fee_bps: int | None = None,
    platform_fee_fixed: dict[str, int] | None = None,
) -> Creator:
    creator, _, _ = await accounts.create_creator(
        session,
        display_name=name,
        email="studio@example.com",
        slug=None,
        platform_fee_bps=platform_fee_bps,
        platform_fee_fixed=platform_fee_fixed,
        now=now,
    )
    return creator


async def create_price(
    session: AsyncSession,
    *,
    creator_id: str,
    now: datetime,
    unit_amount: int = 4800,
    currency: str = "usd",
    kind: str = "physical",
) -> Price:
    product = await catalog.create_product(
        session,
        creator_id=creator_id,
        kind=kind,
        name="Moon mug",
        description="",
        status="published",
        variants=[],
        now=now,
    )
    return await catalog.create_price(
        session,
        creator_id=creator_id,
        product_id=product.id,
        now=now,
        spec=catalog.PriceSpec(currency=currency, unit_amount=unit_amount),
    )


async def create_session(
    session: AsyncSession,
    *,
    creator_id: str,
    price_id: str,
    now: datetime,
    quantity: int = 1,
    email: str = "buyer@example.com",
) -> CheckoutSession:
    return await checkout.create_session(
        session,
        creator_id=creator_id,
        customer_id=None,
        customer_email=email,
        lines=[checkout.LineRequest(price_id=price_id, quantity=quantity)],
        success_url=None,
        cancel_url=None,
        ttl=timedelta(minutes=30),
        now=now,
    )


async def create_plan(
    session: AsyncSession,
    *,
    creator_id: str,
    now: datetime,
    unit_amount: int = 300,
    interval: str = "month",
    interval_count: int = 1,
    trial_days: int = 0,
) -> Price:
    """A recurring price on a published digital product (a zine club)."""
    product = await catalog.create_product(
        session,
        creator_id=creator_id,
        kind="digital",
        name="Club",
        description="",
        status="published",
        variants=[],
        now=now,
    )
    return await catalog.create_price(
        session,
        creator_id=creator_id,
        product_id=product.id,
        now=now,
        spec=catalog.PriceSpec(
            currency="usd",
            unit_amount=unit_amount,
            recurring_interval=interval,
            recurring_interval_count=interval_count,
            trial_days=trial_days,
        ),
    )


async def subscribe(
    database: Database,
    gateway: Gateway,
    *,
    creator_id: str,
    customer_id: str,
    price_id: str,
    policy: renewal.BillingPolicy,
    now: datetime,
) -> tuple[str, str | None]:
    """Save ``tok_visa`` for the customer, subscribe them to ``price_id`` and charge the
    first invoice (none during a trial), each step in its own unit of work as the API
    does: (subscription id, first invoice id or None)."""
    await methods.save_payment_method(
        database, gateway, creator_id=creator_id, customer_id=customer_id, token="tok_visa", now=now
    )
    async with database.unit_of_work() as session:
        created = await subscriptions.create_subscription(
            session,
            creator_id=creator_id,
            customer_id=customer_id,
            items=[subscriptions.ItemRequest(price_id, 1)],
            default_payment_method_id=None,
            metadata={},
            consent=None,
            now=now,
        )
        subscription_id = created.subscription.id
        first = created.invoice.id if created.invoice is not None else None
    if first is not None:
        await renewal.charge_invoice(
            database, gateway, invoice_id=first, attempt=1, policy=policy, now=now
        )
    return subscription_id, first


async def charge_in_one_batch(
    database: Database,
    gateway: Gateway,
    *,
    invoice_ids: list[str],
    settings: Settings,
    now: datetime,
) -> None:
    """Charge these invoices as the worker's one batch of ``billing.charge_invoice`` work
    (attempt 1, one at a time) and check that every one of them went through."""
    requests = [
        consolidation.ChargeRequest(key=f"wrk_{invoice_id}", invoice_id=invoice_id, attempt=1)
        for invoice_id in invoice_ids
    ]
    outcomes = await consolidation.charge_invoices(
        database,
        gateway,
        requests=requests,
        policy=tasks.policy_from(settings),
        now=now,
        concurrency=1,
    )
    assert outcomes == {request.key: None for request in requests}
