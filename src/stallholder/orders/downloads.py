"""What a paid order delivers, for every face that shows it: the order API, the receipt
email, the hosted checkout's success page and the buyer portal (docs/digital-delivery.md)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.digital import delivery as digital
from stallholder.digital.links import Links
from stallholder.orders.models import Order
from stallholder.orders.service import get_order


def ordered_lines(order: Order) -> list[digital.OrderedLine]:
    return [
        digital.OrderedLine(line_id=li.id, product_id=li.product_id, quantity=li.quantity)
        for li in order.line_items
    ]


async def for_order(
    session: AsyncSession, *, order: Order, links: Links, now: datetime
) -> digital.Deliverables:
    """The order's download links (signed now, valid for ``links.ttl``) with their
    counts, and its license keys. A fully refunded order delivers nothing more."""
    if order.status == "refunded":
        return digital.Deliverables(downloads=[], license_keys=[], license_keys_missing=0)
    return await digital.deliverables(
        session, order_id=order.id, lines=ordered_lines(order), links=links, now=now
    )


async def order_deliverables(
    session: AsyncSession, *, creator_id: str, order_id: str, links: Links, now: datetime
) -> digital.Deliverables:
    """``for_order`` by id, for the creator's own order.

    Raises:
        OrderNotFound.
    """
    order = await get_order(session, creator_id=creator_id, order_id=order_id)
    return await for_order(session, order=order, links=links, now=now)
