"""A creator's shipping rates, and the quote a checkout session gets for an address."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.fulfilment.models import ShippingRate
from stallholder.fulfilment.rates import Quote, Rate, WeightBand, choose_rate
from stallholder.kit.errors import InvalidRequest, NotFound, ValidationFailed
from stallholder.kit.ids import new_id
from stallholder.kit.pagination import Page, paginate

# ``shr_``, as Stripe's shipping rates.
ID_PREFIX = "shr"


class ShippingRateNotFound(NotFound):
    slug = "shipping-rate-not-found"
    title = "No such shipping rate"


class InvalidShippingRate(InvalidRequest):
    slug = "invalid-shipping-rate"
    title = "The shipping rate's price does not fit its type"


class ShippingUnavailable(ValidationFailed):
    """No rate of the creator ships to the address's country in the session's currency."""

    slug = "shipping-unavailable"
    title = "The seller does not ship to this address"


@dataclass(frozen=True, slots=True)
class RateSpec:
    display_name: str
    countries: Sequence[str] | None
    currency: str
    type: str
    amount: int | None
    weight_bands: Sequence[WeightBand] | None
    free_shipping_threshold: int | None


def _bands_json(bands: Sequence[WeightBand] | None) -> list[dict[str, int]] | None:
    if bands is None:
        return None
    return [{"up_to_grams": b.up_to_grams, "amount": b.amount} for b in bands]


async def create_rate(
    session: AsyncSession, *, creator_id: str, spec: RateSpec, now: datetime
) -> ShippingRate:
    """A new active rate. The schema has checked that the price fits the type."""
    rate = ShippingRate(
        id=new_id(ID_PREFIX),
        creator_id=creator_id,
        display_name=spec.display_name,
        currency=spec.currency.lower(),
        countries=None if spec.countries is None else sorted({c.upper() for c in spec.countries}),
        type=spec.type,
        amount=spec.amount,
        weight_bands=_bands_json(spec.weight_bands),
        free_shipping_threshold=spec.free_shipping_threshold,
        is_active=True,
        created_at=now,
        updated_at=now,
    )
    session.add(rate)
    await session.flush()
    return rate


async def get_rate(session: AsyncSession, *, creator_id: str, rate_id: str) -> ShippingRate:
    rate = await session.get(ShippingRate, rate_id)
    if rate is None or rate.creator_id != creator_id:
        raise ShippingRateNotFound(f"no shipping rate {rate_id!r}")
    return rate


async def list_rates(
    session: AsyncSession,
    *,
    creator_id: str,
    is_active: bool | None,
    limit: int,
    starting_after: str | None,
) -> Page[ShippingRate]:
    statement = select(ShippingRate).where(ShippingRate.creator_id == creator_id)
    if is_active is not None:
        statement = statement.where(ShippingRate.is_active == is_active)
    return await paginate(
        session,
        statement,
        id_column=ShippingRate.id,
        limit=limit,
        starting_after=starting_after,
    )


async def update_rate(
    session: AsyncSession,
    *,
    creator_id: str,
    rate_id: str,
    now: datetime,
    display_name: str | None = None,
    is_active: bool | None = None,
    amount: int | None = None,
    weight_bands: Sequence[WeightBand] | None = None,
    change_threshold: bool = False,
    free_shipping_threshold: int | None = None,
) -> ShippingRate:
    """Change a rate's name, price, threshold or whether it is offered. Sessions already
    quoted keep their price. With ``change_threshold`` the free-shipping threshold becomes
    ``free_shipping_threshold`` (None removes it).

    Raises:
        ShippingRateNotFound, InvalidShippingRate (an amount for a by-weight rate, or bands
        for a flat one).
    """
    rate = await get_rate(session, creator_id=creator_id, rate_id=rate_id)
    if amount is not None and rate.type != "flat":
        raise InvalidShippingRate(
            f"shipping rate {rate.id} is priced by weight: send weight_bands, not amount"
        )
    if weight_bands is not None and rate.type != "by_weight":
        raise InvalidShippingRate(f"shipping rate {rate.id} is flat: send amount, not weight_bands")
    if display_name is not None:
        rate.display_name = display_name
    if is_active is not None:
        rate.is_active = is_active
    if amount is not None:
        rate.amount = amount
    if weight_bands is not None:
        rate.weight_bands = _bands_json(weight_bands)
    if change_threshold:
        rate.free_shipping_threshold = free_shipping_threshold
    rate.updated_at = now
    await session.flush()
    return rate


def as_rate(row: ShippingRate) -> Rate:
    """The row as the pure rate calculation takes it."""
    return Rate(
        id=row.id,
        display_name=row.display_name,
        currency=row.currency,
        countries=None if row.countries is None else frozenset(row.countries),
        amount=row.amount,
        weight_bands=tuple(
            WeightBand(up_to_grams=band["up_to_grams"], amount=band["amount"])
            for band in row.weight_bands or ()
        ),
        free_shipping_threshold=row.free_shipping_threshold,
    )


async def active_rates(session: AsyncSession, *, creator_id: str) -> list[ShippingRate]:
    """The creator's active rates, oldest first (the order ties are broken in)."""
    return list(
        (
            await session.execute(
                select(ShippingRate)
                .where(ShippingRate.creator_id == creator_id, ShippingRate.is_active.is_(True))
                .order_by(ShippingRate.created_at, ShippingRate.id)
            )
        ).scalars()
    )


async def creator_ships(session: AsyncSession, *, creator_id: str) -> bool:
    """Whether the creator ships at all: it has an active rate. A creator with none hands
    its physical goods over in person, and its sessions ask for no address."""
    found = await session.execute(
        select(ShippingRate.id)
        .where(ShippingRate.creator_id == creator_id, ShippingRate.is_active.is_(True))
        .limit(1)
    )
    return found.first() is not None


async def quote(
    session: AsyncSession,
    *,
    creator_id: str,
    country: str,
    currency: str,
    subtotal: int,
    weight_grams: int,
) -> Quote:
    """The rate a parcel to ``country`` gets, and its price.

    Raises:
        ShippingUnavailable: no active rate ships there in ``currency`` at that weight
            (named as ``shipping_address.country``).
    """
    rates = [as_rate(row) for row in await active_rates(session, creator_id=creator_id)]
    chosen = choose_rate(
        rates, country=country, currency=currency, subtotal=subtotal, weight_grams=weight_grams
    )
    if chosen is None:
        message = (
            f"the seller has no shipping rate to {country} in {currency} for a parcel of "
            f"{weight_grams} g"
        )
        raise ShippingUnavailable(
            message,
            errors=[{"loc": "shipping_address.country", "msg": message, "type": "shipping"}],
        )
    return chosen
