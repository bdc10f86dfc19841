"""HTTP routes for shipping rates (``shr_``) and shipments (``shp_``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from stallholder.accounts.auth import SecretCreatorDep
from stallholder.fulfilment import service, shipments
from stallholder.fulfilment.rates import WeightBand
from stallholder.fulfilment.schemas import (
    ShipmentCreate,
    ShipmentOut,
    ShippingRateCreate,
    ShippingRateOut,
    ShippingRateUpdate,
    WeightBandIn,
    shipment_out,
    shipping_rate_out,
)
from stallholder.kit.http import NowDep, SessionDep
from stallholder.kit.openapi import documents
from stallholder.kit.pagination import DEFAULT_LIMIT, MAX_LIMIT
from stallholder.kit.schemas import ListOut

router = APIRouter(prefix="/v1", tags=["shipping"])
# Who made a stock movement through this API (docs/inventory.md).
API_ACTOR = "secret_key"
LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


def _bands(bands: list[WeightBandIn] | None) -> list[WeightBand] | None:
    if bands is None:
        return None
    return [WeightBand(up_to_grams=b.up_to_grams, amount=b.amount) for b in bands]


@router.post("/shipping_rates", status_code=201, response_model=ShippingRateOut)
async def create_shipping_rate(
    body: ShippingRateCreate, creator_id: SecretCreatorDep, session: SessionDep, now: NowDep
) -> ShippingRateOut:
    """A shipping rate for one zone (a set of countries, or the rest of the world) in one
    currency: flat or by weight, optionally free from an order subtotal."""
    rate = await service.create_rate(
        session,
        creator_id=creator_id,
        spec=service.RateSpec(
            display_name=body.display_name,
            countries=body.zone.countries,
            currency=body.currency,
            type=body.type,
            amount=body.amount,
            weight_bands=_bands(body.weight_bands),
            free_shipping_threshold=body.free_shipping_threshold,
        ),
        now=now,
    )
    return shipping_rate_out(rate)


@router.get("/shipping_rates", response_model=ListOut)
async def list_shipping_rates(
    creator_id: SecretCreatorDep,
    session: SessionDep,
    active: bool | None = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> ListOut:
    page = await service.list_rates(
        session,
        creator_id=creator_id,
        is_active=active,
        limit=limit,
        starting_after=starting_after,
    )
    return ListOut(data=[shipping_rate_out(rate) for rate in page.data], has_more=page.has_more)


@router.get("/shipping_rates/{rate_id}", response_model=ShippingRateOut)
async def get_shipping_rate(
    rate_id: str, creator_id: SecretCreatorDep, session: SessionDep
) -> ShippingRateOut:
    return shipping_rate_out(
        await service.get_rate(session, creator_id=creator_id, rate_id=rate_id)
    )


@router.patch("/shipping_rates/{rate_id}", response_model=ShippingRateOut)
async def update_shipping_rate(
    rate_id: str,
    body: ShippingRateUpdate,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    now: NowDep,
) -> ShippingRateOut:
    """Rename, reprice, deactivate (``active: false``) or reactivate a rate; send
    ``free_shipping_threshold: null`` to remove the threshold."""
    rate = await service.update_rate(
        session,
        creator_id=creator_id,
        rate_id=rate_id,
        now=now,
        display_name=body.display_name,
        is_active=body.active,
        amount=body.amount,
        weight_bands=_bands(body.weight_bands),
        change_threshold="free_shipping_threshold" in body.model_fields_set,
        free_shipping_threshold=body.free_shipping_threshold,
    )
    return shipping_rate_out(rate)


@documents(shipments.AlreadyShipped, shipments.NothingToShip)
async def ships_an_order() -> None:
    """Documents the problems of shipping an order."""


@router.post(
    "/orders/{order_id}/shipments",
    status_code=201,
    response_model=ShipmentOut,
    tags=["orders"],
    dependencies=[Depends(ships_an_order)],
)
async def create_shipment(
    order_id: str,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    now: NowDep,
    body: ShipmentCreate | None = None,
) -> ShipmentOut:
    """The order's parcel left: every unit of it at once. Tracked stock turns from
    ``allocated`` into a ``sold`` movement (``on_hand`` falls), ``order.shipped`` is emitted
    and the buyer gets an email with the tracking details."""
    body = body or ShipmentCreate()
    shipment = await shipments.ship_order(
        session,
        creator_id=creator_id,
        order_id=order_id,
        carrier=body.carrier,
        tracking_number=body.tracking_number,
        tracking_url=str(body.tracking_url) if body.tracking_url is not None else None,
        actor=API_ACTOR,
        now=now,
    )
    return shipment_out(shipment)


@router.get("/orders/{order_id}/shipments", response_model=ListOut, tags=["orders"])
async def list_order_shipments(
    order_id: str, creator_id: SecretCreatorDep, session: SessionDep
) -> ListOut:
    """The order's shipments (at most one: a shipment takes the whole order)."""
    found = await shipments.shipments_of_order(session, creator_id=creator_id, order_id=order_id)
    return ListOut(data=[shipment_out(s) for s in found], has_more=False)


@router.get("/shipments/{shipment_id}", response_model=ShipmentOut, tags=["orders"])
async def get_shipment(
    shipment_id: str, creator_id: SecretCreatorDep, session: SessionDep
) -> ShipmentOut:
    return shipment_out(
        await shipments.get_shipment(session, creator_id=creator_id, shipment_id=shipment_id)
    )
