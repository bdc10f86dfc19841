"""Waitlists of sold-out drops: buyers sign up, and units that come back are offered to
them in signup order, one unit each, held for them by a checkout session
(``docs/inventory.md#waitlists``).

Units come back when a drop's checkout session expires or is cancelled (``drops.release``),
when a refund restocks a drop's order (``drops.restock``) and when stock of a drop's
variant is adjusted upward (``stock.adjust``). Each of those calls ``units_returned`` in
its own transaction, which queues ``OFFER_KIND`` work for every drop of those units that
has buyers waiting. The work (``checkout.waitlist_offers``) opens one checkout session per
waiting buyer, in signup order, while the drop has units; the session holds the unit
for ``waitlist_hold_minutes`` and its link is emailed. A session that expires unpaid
passes the offer (``passed``) and gives the unit back, which queues the next offer.

The line order and the status changes are ``offers``, shared with raffles.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.catalog.models import Price, Variant
from stallholder.events.service import emit
from stallholder.inventory import offers
from stallholder.inventory.drop_rules import buyer_key
from stallholder.inventory.models import Drop, DropItem, StockLevel, WaitlistEntry
from stallholder.inventory.quantities import Quantities, total_available
from stallholder.kit import work
from stallholder.kit.errors import Conflict, InvalidRequest, NotFound
from stallholder.kit.ids import new_id
from stallholder.kit.pagination import Page, paginate

# The due work that offers a drop's returned units to its waitlist (handled by checkout,
# which opens the sessions that hold them).
OFFER_KIND = "inventory.waitlist_offer"


class WaitlistDropNotFound(NotFound):
    slug = "drop-not-found"
    title = "No such drop"


class WaitlistNotAvailable(Conflict):
    slug = "waitlist-not-available"
    title = "The drop has no waitlist"


class WaitlistClosed(Conflict):
    slug = "waitlist-closed"
    title = "The drop's waitlist is not open now"


class DropNotSoldOut(Conflict):
    slug = "drop-not-sold-out"
    title = "The drop still has units: buy one instead of waiting"


class PriceNotInDrop(InvalidRequest):
    slug = "price-not-in-drop"
    title = "The price is not sold in this drop"


def _insert(session: AsyncSession):  # type: ignore[no-untyped-def]
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


async def _drop(session: AsyncSession, *, creator_id: str, drop_id: str) -> Drop:
    drop = await session.get(Drop, drop_id, populate_existing=True)
    if drop is None or drop.creator_id != creator_id:
        raise WaitlistDropNotFound(f"no drop {drop_id!r}")
    return drop


async def _entry(session: AsyncSession, *, drop_id: str, key: str) -> WaitlistEntry | None:
    return (
        await session.execute(
            select(WaitlistEntry)
            .where(WaitlistEntry.drop_id == drop_id, WaitlistEntry.buyer_key == key)
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()


async def buyable(session: AsyncSession, *, item: DropItem) -> int:
    """How many units of the drop item a checkout session could hold now: what the drop
    has left of it, or less when its default variant is tracked and has less stock."""
    left = item.quantity - item.held - item.sold
    if left <= 0:
        return 0
    levels = await session.execute(
        select(
            StockLevel.on_hand, StockLevel.reserved, StockLevel.allocated, StockLevel.safety_stock
        )
        .join(Variant, Variant.id == StockLevel.variant_id)
        .join(Price, Price.product_id == Variant.product_id)
        .where(Price.id == item.price_id, Variant.is_default.is_(True))
    )
    rows = list(levels)
    if not rows:
        return left
    return min(
        left,
        total_available(
            [
                Quantities(
                    on_hand=row.on_hand,
                    reserved=row.reserved,
                    allocated=row.allocated,
                    safety_stock=row.safety_stock,
                )
                for row in rows
            ]
        ),
    )


async def sign_up(
    session: AsyncSession,
    *,
    creator_id: str,
    drop_id: str,
    email: str,
    price_id: str | None,
    now: datetime,
) -> WaitlistEntry:
    """Put the buyer on the drop's waitlist, for ``price_id`` or any of its prices. One
    entry per normalised email: signing up again returns the entry, whatever its status.

    Raises:
        WaitlistDropNotFound, WaitlistNotAvailable (a raffle drop: its draw order is its
        line), WaitlistClosed (before ``opens_at``, from ``closes_at`` on), PriceNotInDrop,
        DropNotSoldOut (a unit can be bought now: the price named, or any when none is).
    """
    drop = await _drop(session, creator_id=creator_id, drop_id=drop_id)
    if drop.mode != "first_come":
        raise WaitlistNotAvailable(
            f"drop {drop.id} is a raffle: its unclaimed units pass to the next entrant in "
            f"draw order; enter it at POST /v1/drops/{drop.id}/entries",
            drop=drop.id,
        )
    key = buyer_key(email)
    existing = await _entry(session, drop_id=drop.id, key=key)
    if existing is not None:
        return existing
    if not drop.opens_at <= now < drop.closes_at:
        raise WaitlistClosed(
            f"drop {drop.id} takes waitlist signups while it is open, from "
            f"{drop.opens_at.isoformat()} until {drop.closes_at.isoformat()}",
            drop=drop.id,
            opens_at=drop.opens_at.isoformat(),
            closes_at=drop.closes_at.isoformat(),
        )
    items = list(
        (
            await session.execute(
                select(DropItem).where(DropItem.drop_id == drop.id).order_by(DropItem.position)
            )
        ).scalars()
    )
    if price_id is not None:
        items = [item for item in items if item.price_id == price_id]
        if not items:
            raise PriceNotInDrop(f"price {price_id!r} is not sold in drop {drop.id}")
    left = {item.price_id: await buyable(session, item=item) for item in items}
    if any(left.values()):
        raise DropNotSoldOut(
            f"drop {drop.id} has units to buy now ({sum(left.values())} left); open a "
            "checkout session instead",
            drop=drop.id,
            remaining=sum(left.values()),
        )
    await session.execute(
        _insert(session)(WaitlistEntry)
        .values(
            id=new_id("wle"),
            creator_id=drop.creator_id,
            drop_id=drop.id,
            price_id=price_id,
            buyer_key=key,
            email=email.strip(),
            status="waiting",
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=[WaitlistEntry.drop_id, WaitlistEntry.buyer_key])
    )
    entry = await _entry(session, drop_id=drop.id, key=key)
    assert entry is not None
    return entry


async def list_entries(
    session: AsyncSession, *, creator_id: str, drop_id: str, limit: int, starting_after: str | None
) -> Page[WaitlistEntry]:
    """The drop's waitlist, newest signup first.

    Raises:
        WaitlistDropNotFound.
    """
    drop = await _drop(session, creator_id=creator_id, drop_id=drop_id)
    return await paginate(
        session,
        select(WaitlistEntry).where(WaitlistEntry.drop_id == drop.id),
        id_column=WaitlistEntry.id,
        limit=limit,
        starting_after=starting_after,
    )


async def units_returned(
    session: AsyncSession,
    *,
    now: datetime,
    drop_ids: Iterable[str] = (),
    variant_ids: Iterable[str] = (),
) -> int:
    """Units of these drops, or of drops selling these variants, came back: queue an
    offer to the waitlist of each one that has buyers waiting (one read when none has).
    Returns how many drops."""
    drops = sorted(set(drop_ids))
    variants = sorted(set(variant_ids))
    if not drops and not variants:
        return 0
    conditions = []
    if drops:
        conditions.append(WaitlistEntry.drop_id.in_(drops))
    if variants:
        conditions.append(
            WaitlistEntry.drop_id.in_(
                select(DropItem.drop_id)
                .join(Price, Price.id == DropItem.price_id)
                .join(Variant, Variant.product_id == Price.product_id)
                .where(Variant.id.in_(variants))
            )
        )
    waiting = list(
        await session.execute(
            select(WaitlistEntry.drop_id, WaitlistEntry.creator_id)
            .where(WaitlistEntry.status == "waiting", or_(*conditions))
            .distinct()
        )
    )
    for row in sorted(waiting):
        await work.enqueue(
            session,
            kind=OFFER_KIND,
            payload={"drop_id": row.drop_id},
            due_at=now,
            now=now,
            creator_id=row.creator_id,
        )
    return len(waiting)


async def take_next(
    session: AsyncSession, *, drop: Drop, price_ids: Sequence[str], now: datetime
) -> Row[Any] | None:
    """The next buyer in signup order waiting for one of ``price_ids`` (or for any),
    moved to ``offered``. None when nobody waits for them."""
    return await offers.take_next(
        session,
        WaitlistEntry,
        where=[
            WaitlistEntry.drop_id == drop.id,
            or_(WaitlistEntry.price_id.is_(None), WaitlistEntry.price_id.in_(price_ids)),
        ],
        order_by=[WaitlistEntry.id],
        waiting="waiting",
        values={"status": "offered", "updated_at": now},
        returning=[WaitlistEntry.id, WaitlistEntry.email, WaitlistEntry.price_id],
    )


async def record_offer(
    session: AsyncSession,
    *,
    drop: Drop,
    entry_id: str,
    email: str,
    checkout_session_id: str,
    url: str,
    expires_at: datetime,
    now: datetime,
) -> None:
    """The offer's session is open: note it on the entry and emit ``drop.waitlist_offer``
    (the buyer is emailed the link)."""
    await session.execute(
        update(WaitlistEntry)
        .where(WaitlistEntry.id == entry_id)
        .values(checkout_session_id=checkout_session_id, offer_expires_at=expires_at)
        .execution_options(synchronize_session=False)
    )
    await emit(
        session,
        creator_id=drop.creator_id,
        type="drop.waitlist_offer",
        data={
            "object": "waitlist_offer",
            "drop": drop.id,
            "drop_name": drop.name,
            "entry": entry_id,
            "email": email,
            "checkout_session": checkout_session_id,
            "url": url,
            "expires_at": expires_at.isoformat(),
        },
        now=now,
    )


async def skip(session: AsyncSession, *, entry_id: str, now: datetime) -> None:
    """The buyer cannot take an offer (they reached the drop's per-customer limit): their
    turn passes."""
    await session.execute(
        update(WaitlistEntry)
        .where(WaitlistEntry.id == entry_id, WaitlistEntry.status == "waiting")
        .values(status="passed", updated_at=now)
        .execution_options(synchronize_session=False)
    )


async def after_release(
    session: AsyncSession, *, checkout_session_id: str, drop_ids: Iterable[str], now: datetime
) -> None:
    """A drop's session ended unpaid: if it held a waitlist offer, the offer passes; and
    the units it gave back go to whoever waits next."""
    await offers.lapse(
        session,
        WaitlistEntry,
        where=[WaitlistEntry.checkout_session_id == checkout_session_id],
        now=now,
    )
    await units_returned(session, drop_ids=drop_ids, now=now)


async def after_sale(session: AsyncSession, *, checkout_session_id: str, now: datetime) -> None:
    """A drop's session was paid: a waitlist offer it held is ``claimed``."""
    await session.execute(
        update(WaitlistEntry)
        .where(
            WaitlistEntry.checkout_session_id == checkout_session_id,
            WaitlistEntry.status == "offered",
        )
        .values(status="claimed", updated_at=now)
        .execution_options(synchronize_session=False)
    )
