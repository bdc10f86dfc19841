"""What a paid order delivers, for every face that shows it: the order API, the receipt
email, the hosted checkout's success page and the buyer portal (docs/digital-delivery.md)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.digital import delivery as digital
from stallholder.digital.links import Links
from stallholder.orders.models import Order, OrderLineItem


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


async def for_orders(
    session: AsyncSession, *, order_ids: Sequence[str], links: Links, now: datetime
) -> dict[str, digital.Deliverables]:
    """``for_order`` of many orders (by id) in five statements, however many there are:
    the worker's receipts for a batch of ``order.paid`` events. An id with no order is
    left out."""
    wanted = sorted(set(order_ids))
    if not wanted:
        return {}
    rows = (
        await session.execute(
            select(
                Order.id,
                Order.status,
                OrderLineItem.id,
                OrderLineItem.product_id,
                OrderLineItem.quantity,
            )
            .join(OrderLineItem, OrderLineItem.order_id == Order.id)
            .where(Order.id.in_(wanted))
            .order_by(Order.id, OrderLineItem.id)
        )
    ).all()
    delivering: dict[str, list[digital.OrderedLine]] = {}
    refunded: set[str] = set()
    for order_id, status, line_id, product_id, quantity in rows:
        if status == "refunded":  # a fully refunded order delivers nothing more
            refunded.add(order_id)
            continue
        delivering.setdefault(order_id, []).append(
            digital.OrderedLine(line_id=line_id, product_id=product_id, quantity=quantity)
        )
    found = await digital.deliverables_of_orders(session, orders=delivering, links=links, now=now)
    nothing = digital.Deliverables(downloads=[], license_keys=[], license_keys_missing=0)
    return found | dict.fromkeys(refunded, nothing)
