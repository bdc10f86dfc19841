"""Typed keyword-only factories over the services (Polar's random_objects style)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts import service as accounts
from stallholder.accounts.models import Creator
from stallholder.catalog import service as catalog
from stallholder.catalog.models import Price
from stallholder.checkout import service as checkout
from stallholder.checkout.models import CheckoutSession


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
