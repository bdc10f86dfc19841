"""Offering a drop's returned units to its waitlist: one checkout session per waiting
buyer, in signup order, each holding one unit for the drop's ``waitlist_hold_minutes``
(``inventory.waitlists`` says when units come back; docs/inventory.md#waitlists).

The session is the hold: it claims the drop unit and the stock by the same conditional
updates as any buyer's session, so a buyer racing the offer for a released unit and the
offer can never both get it. Its link (the hosted checkout page) is emailed; its expiry
(the sweep ``checkout.expire_sessions``) gives the unit back, passes the offer, and
queues the next.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.checkout.schemas import present_session
from stallholder.checkout.service import LineRequest, create_session
from stallholder.inventory import drops, waitlists
from stallholder.inventory.models import Drop, DropItem
from stallholder.inventory.reservations import OutOfStock
from stallholder.kit.errors import DomainError

log = logging.getLogger("stallholder.checkout")


async def offer_units(session: AsyncSession, *, drop_id: str, base_url: str, now: datetime) -> int:
    """Offer every unit the drop can sell now to the buyers waiting for it, first signed
    up first. Each offer is made in a savepoint: one that finds the unit taken (a buyer
    was faster) is undone and that price is not offered again in this run. Returns how
    many offers were made; 0 for a drop that is not open."""
    drop = await session.get(Drop, drop_id, populate_existing=True)
    if drop is None or drop.mode != "first_come" or not drop.opens_at <= now < drop.closes_at:
        return 0
    hold = timedelta(minutes=drop.waitlist_hold_minutes)
    prices = list(
        (
            await session.execute(
                select(DropItem.price_id)
                .where(DropItem.drop_id == drop.id)
                .order_by(DropItem.position)
            )
        ).scalars()
    )
    offered = 0
    while prices:
        savepoint = await session.begin_nested()
        entry = await waitlists.take_next(session, drop=drop, price_ids=prices, now=now)
        if entry is None:
            await savepoint.commit()
            break
        price_id = entry.price_id or prices[0]
        try:
            checkout = await create_session(
                session,
                creator_id=drop.creator_id,
                lines=[LineRequest(price_id=price_id, quantity=1)],
                customer_id=None,
                customer_email=entry.email,
                success_url=None,
                cancel_url=None,
                ttl=hold,
                hold=hold,
                now=now,
            )
        except OutOfStock:
            await savepoint.rollback()
            prices.remove(price_id)
            continue
        except drops.DropLimitReached:
            await savepoint.rollback()
            await waitlists.skip(session, entry_id=entry.id, now=now)
            continue
        except DomainError as error:
            # The price cannot be sold now (archived, the drop's window changed): nobody
            # can be offered it, and the others still can.
            await savepoint.rollback()
            log.warning(
                "drop %s: price %s not offered to its waitlist: %s", drop.id, price_id, error
            )
            prices.remove(price_id)
            continue
        url = present_session(checkout, base_url=base_url, status="open").url
        await waitlists.record_offer(
            session,
            drop=drop,
            entry_id=entry.id,
            email=entry.email,
            checkout_session_id=checkout.id,
            url=url,
            expires_at=checkout.expires_at,
            now=now,
        )
        await savepoint.commit()
        offered += 1
    return offered
