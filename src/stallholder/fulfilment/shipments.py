"""Shipping an order: the parcel leaves, its stock turns into ``sold`` movements, the
buyer hears about it (``docs/shipping.md``, "Shipments").

A shipment takes every unit of the order at once (no partial shipments yet). It is refused
for an order with nothing physical to send, for one refunded in full, for one whose units a
refund restocked, and for one shipped already; the order's row lock serialises it with a
concurrent shipment or refund of the same order.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.events import service as events
from stallholder.fulfilment.models import Shipment
from stallholder.inventory import reservations
from stallholder.inventory.models import StockReservation
from stallholder.kit.errors import Conflict, NotFound
from stallholder.kit.ids import new_id
from stallholder.orders import service as orders


class ShipmentNotFound(NotFound):
    slug = "shipment-not-found"
    title = "No such shipment"


class AlreadyShipped(Conflict):
    slug = "order-already-shipped"
    title = "The order has been shipped already"


class NothingToShip(Conflict):
    slug = "nothing-to-ship"
    title = "The order has nothing waiting to be shipped"


async def ship_order(
    session: AsyncSession,
    *,
    creator_id: str,
    order_id: str,
    carrier: str | None,
    tracking_number: str | None,
    tracking_url: str | None,
    actor: str,
    now: datetime,
) -> Shipment:
    """Ship every unit of the order: its allocated stock leaves ``on_hand`` and
    ``allocated`` with a ``sold`` movement per level, and ``order.shipped`` is emitted (the
    buyer's email follows from it)."""
    order = await orders.get_order(
        session, creator_id=creator_id, order_id=order_id, for_update=True
    )
    shipped = await _shipment_of(session, order_id=order.id)
    if shipped is not None:
        raise AlreadyShipped(f"order {order.id} was shipped as {shipped.id}", shipment=shipped.id)
    if order.status == "refunded":
        raise NothingToShip(f"order {order.id} was refunded in full; there is nothing to ship")
    shipment_id = new_id("shp")
    units = await reservations.ship(
        session, order_id=order.id, shipment_id=shipment_id, actor=actor, now=now
    )
    if not units:
        if await _has_tracked_units(session, order_id=order.id):
            raise NothingToShip(
                f"a refund of order {order.id} put its units back on sale; there is nothing to ship"
            )
        if order.shipping_address is None:
            raise NothingToShip(
                f"order {order.id} has no physical items and no shipping address; "
                "digital goods and services are not shipped"
            )
    shipment = Shipment(
        id=shipment_id,
        creator_id=creator_id,
        order_id=order.id,
        carrier=carrier,
        tracking_number=tracking_number,
        tracking_url=tracking_url,
        items=[
            {"sku": line.sku, "description": line.description, "quantity": line.quantity}
            for line in order.line_items
        ],
        created_at=now,
    )
    session.add(shipment)
    await session.flush()
    await events.emit(
        session,
        creator_id=creator_id,
        type="order.shipped",
        now=now,
        data=shipment_data(shipment, customer_email=order.customer_email),
    )
    return shipment


def shipment_data(shipment: Shipment, *, customer_email: str) -> dict[str, Any]:
    """The ``order.shipped`` payload: the shipment and where the buyer's email goes."""
    return {
        "object": "shipment",
        "id": shipment.id,
        "order": shipment.order_id,
        "customer_email": customer_email,
        "carrier": shipment.carrier,
        "tracking_number": shipment.tracking_number,
        "tracking_url": shipment.tracking_url,
        "items": shipment.items,
        "created": shipment.created_at.isoformat(),
    }


async def get_shipment(session: AsyncSession, *, creator_id: str, shipment_id: str) -> Shipment:
    shipment = (
        await session.execute(
            select(Shipment).where(Shipment.id == shipment_id, Shipment.creator_id == creator_id)
        )
    ).scalar_one_or_none()
    if shipment is None:
        raise ShipmentNotFound(f"no shipment {shipment_id!r}")
    return shipment


async def shipments_of_order(
    session: AsyncSession, *, creator_id: str, order_id: str
) -> list[Shipment]:
    """The order's shipments (at most one today); the order must be the creator's."""
    order = await orders.get_order(session, creator_id=creator_id, order_id=order_id)
    shipment = await _shipment_of(session, order_id=order.id)
    return [] if shipment is None else [shipment]


async def _shipment_of(session: AsyncSession, *, order_id: str) -> Shipment | None:
    return (
        await session.execute(select(Shipment).where(Shipment.order_id == order_id))
    ).scalar_one_or_none()


async def _has_tracked_units(session: AsyncSession, *, order_id: str) -> bool:
    return bool(await session.scalar(select(exists().where(StockReservation.order_id == order_id))))
