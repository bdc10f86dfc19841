"""Drops: a few prices released in a window, each up to its quantity, first come first
served, with a short hold and an optional limit per buyer.

A checkout session for a drop's price claims its units when it is created, in the same
transaction as its stock hold and before it. Before the session is written, ``admit``
counts the buyer: the buyer's row in ``drop_buyers`` grows by one conditional upsert
(``… WHERE units + n <= limit``), and a drop already sold out (as read with the prices) is
refused without touching its rows. After it, ``claim`` writes the claims and, last, grows
each drop item's ``held`` by a conditional update (``… WHERE quantity − held − sold >=
n``): the hot row is locked for as little of the transaction as possible. Expiry releases
the claims, payment sells them. Lock order: the buyer's row, the drop items in key order,
then stock levels (ADR 0012).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, ScalarSelect, Table, bindparam, exists, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.dml import ReturningInsert

from stallholder.catalog.models import Price
from stallholder.inventory import drop_events, raffles, waitlists
from stallholder.inventory.drop_rules import DropState, buyer_key, drop_state
from stallholder.inventory.models import Drop, DropBuyer, DropClaim, DropItem
from stallholder.inventory.reservations import OutOfStock
from stallholder.kit.db import defer_until_commit, is_unique_violation
from stallholder.kit.errors import Conflict, InvalidRequest, NotFound
from stallholder.kit.ids import new_id
from stallholder.kit.pagination import Page, paginate


class DropNotFound(NotFound):
    slug = "drop-not-found"
    title = "No such drop"


class DropNotOpen(Conflict):
    slug = "drop-not-open"
    title = "The drop has not opened yet"


class DropClosed(Conflict):
    slug = "drop-closed"
    title = "The drop has closed"


class DropLimitReached(Conflict):
    slug = "drop-limit-reached"
    title = "The buyer has reached the drop's per-customer limit"


class InvalidDropItem(InvalidRequest):
    slug = "invalid-drop-item"
    title = "A drop item's price cannot be sold in a drop"


class PriceInAnotherDrop(Conflict):
    slug = "price-in-another-drop"
    title = "The price is sold in another drop"


class DropBuyerEmailRequired(InvalidRequest):
    slug = "customer-email-required"
    title = "The buyer's email is needed"


@dataclass(frozen=True, slots=True)
class ItemSpec:
    price_id: str
    quantity: int


@dataclass(frozen=True, slots=True)
class DropView:
    drop: Drop
    items: list[DropItem]

    @property
    def remaining(self) -> int:
        return sum(item.quantity - item.held - item.sold for item in self.items)

    def state(self, now: datetime) -> DropState:
        return drop_state(
            now=now,
            opens_at=self.drop.opens_at,
            closes_at=self.drop.closes_at,
            remaining=self.remaining,
        )


async def create_drop(
    session: AsyncSession,
    *,
    creator_id: str,
    name: str,
    mode: str,
    opens_at: datetime,
    closes_at: datetime,
    per_customer_limit: int | None,
    reservation_minutes: int,
    items: Sequence[ItemSpec],
    now: datetime,
    claim_minutes: int = 60,
    waitlist_hold_minutes: int = 15,
) -> DropView:
    """A drop of one-time prices, each in at most one drop.

    Raises:
        InvalidRequest (``closes_at`` not after ``opens_at``), InvalidDropItem,
        PriceInAnotherDrop.
    """
    if closes_at <= opens_at:
        raise InvalidRequest(
            f"closes_at ({closes_at.isoformat()}) must be after opens_at ({opens_at.isoformat()})"
        )
    seen: set[str] = set()
    for position, spec in enumerate(items):
        if spec.price_id in seen:
            raise InvalidDropItem(f"items[{position}]: price {spec.price_id} is listed twice")
        seen.add(spec.price_id)
        price = await session.get(Price, spec.price_id)
        if price is None or price.creator_id != creator_id:
            raise InvalidDropItem(f"items[{position}]: no price {spec.price_id!r}")
        if not price.is_active or price.type == "recurring":
            raise InvalidDropItem(
                f"items[{position}]: price {price.id} is "
                f"{'archived' if not price.is_active else 'recurring'}; a drop sells "
                "active one-time prices"
            )
    drop = Drop(
        id=new_id("drop"),
        creator_id=creator_id,
        name=name,
        mode=mode,
        opens_at=opens_at,
        closes_at=closes_at,
        per_customer_limit=per_customer_limit,
        reservation_minutes=reservation_minutes,
        claim_minutes=claim_minutes,
        waitlist_hold_minutes=waitlist_hold_minutes,
        created_at=now,
    )
    rows = [
        DropItem(
            creator_id=creator_id,
            drop_id=drop.id,
            price_id=spec.price_id,
            position=position,
            quantity=spec.quantity,
            held=0,
            sold=0,
        )
        for position, spec in enumerate(items)
    ]
    session.add(drop)
    session.add_all(rows)
    if mode == "raffle":
        raffles.commit_seed(drop)
    try:
        await session.flush()
    except IntegrityError as error:
        if not is_unique_violation(error, "uq_drop_items_price_id"):
            raise
        raise PriceInAnotherDrop(
            "a price of this drop is sold in another drop already; each price is in one drop"
        ) from error
    # After the flush that finds a price in another drop (enqueueing flushes too).
    await drop_events.schedule(session, drop=drop, now=now)
    if mode == "raffle":
        await raffles.schedule_draw(session, drop=drop, now=now)
    return DropView(drop=drop, items=rows)


class DropNotEditable(Conflict):
    slug = "drop-not-editable"
    title = "This part of the drop can no longer be changed"


class DropQuantityBelowTaken(Conflict):
    slug = "drop-quantity-below-taken"
    title = "A drop item's quantity cannot be below what is held and sold"


# What ``update_drop`` may be given; a key that is absent is kept.
DROP_CHANGES = frozenset(
    {
        "name",
        "opens_at",
        "closes_at",
        "per_customer_limit",
        "reservation_minutes",
        "waitlist_hold_minutes",
        "claim_minutes",
        "items",
    }
)


async def update_drop(
    session: AsyncSession,
    *,
    creator_id: str,
    drop_id: str,
    changes: dict[str, Any],
    now: datetime,
) -> DropView:
    """Change a drop (``changes`` holds only what the caller sent; ``items`` is a list of
    ItemSpec for prices already in the drop). What may change when:

    - ``name``, ``per_customer_limit`` (None: no limit), ``reservation_minutes``,
      ``waitlist_hold_minutes``, ``claim_minutes``: any time; they apply to what happens
      next (a lower limit takes nothing from buyers who hold more already). A first come
      drop's limit is set or removed only before it opens (from one number to another
      any time): buyers are counted only while there is a limit.
    - ``opens_at``: before the drop opens, and not to a time past (now opens it now).
    - ``closes_at``: before the drop closes (a raffle: before its draw), to a time after
      now and after ``opens_at``. The announcements and a raffle's draw move with it.
    - an item's ``quantity``: any time, not below its held and sold units (one
      conditional update of the item's row: a checkout taking a unit meanwhile is never
      oversold); a raffle's only before its draw. Units added to a sold-out drop go to its
      waitlist first.

    Emits ``drop.updated`` when anything changed.

    Raises:
        DropNotFound, DropNotEditable, DropQuantityBelowTaken, InvalidDropItem (a price
        not in the drop, or listed twice), InvalidRequest (``closes_at`` not after
        ``opens_at``, a time in the past).
    """
    drop = await session.get(Drop, drop_id, populate_existing=True)
    if drop is None or drop.creator_id != creator_id:
        raise DropNotFound(f"no drop {drop_id!r}")
    unknown = set(changes) - DROP_CHANGES
    if unknown:
        raise ValueError(f"update_drop cannot change {sorted(unknown)}")
    opens_at: datetime = changes.get("opens_at", drop.opens_at)
    closes_at: datetime = changes.get("closes_at", drop.closes_at)
    drawn = drop.drawn_at is not None
    if "opens_at" in changes and opens_at != drop.opens_at:
        if now >= drop.opens_at:
            raise DropNotEditable(
                f"drop {drop.id} opened at {drop.opens_at.isoformat()}; its opening cannot "
                "move (closes_at can, until it closes)",
                field="opens_at",
            )
        if opens_at < now:
            raise InvalidRequest(
                f"opens_at ({opens_at.isoformat()}) is in the past; give a later time, or "
                "now to open the drop at once",
                param="opens_at",
            )
    if "closes_at" in changes and closes_at != drop.closes_at:
        if now >= drop.closes_at or drawn:
            raise DropNotEditable(
                f"drop {drop.id} closed at {drop.closes_at.isoformat()}; its closing cannot "
                "move (create a new drop to sell again)",
                field="closes_at",
            )
        if closes_at <= now:
            raise InvalidRequest(
                f"closes_at ({closes_at.isoformat()}) is not in the future; give a later time",
                param="closes_at",
            )
    if closes_at <= opens_at:
        raise InvalidRequest(
            f"closes_at ({closes_at.isoformat()}) must be after opens_at ({opens_at.isoformat()})"
        )
    limited = drop.per_customer_limit is not None
    if (
        "per_customer_limit" in changes
        and (changes["per_customer_limit"] is not None) != limited
        and drop.mode != "raffle"
        and now >= drop.opens_at
    ):
        # Buyers are counted (``drop_buyers``) only while the drop has a limit, and an
        # expiry takes its units off the count: a limit set or removed once claims exist
        # would take off units never counted.
        raise DropNotEditable(
            f"drop {drop.id} opened at {drop.opens_at.isoformat()} with "
            + (
                "a per-customer limit; it can change to another number but cannot be removed"
                if limited
                else "no per-customer limit; one cannot be added once it is open"
            ),
            field="per_customer_limit",
        )
    items = await _items(session, drop_id=drop.id)
    by_price = {item.price_id: item for item in items}
    wanted: dict[str, int] = {}
    for position, spec in enumerate(changes.get("items", [])):
        if spec.price_id in wanted:
            raise InvalidDropItem(f"items[{position}]: price {spec.price_id} is listed twice")
        if spec.price_id not in by_price:
            raise InvalidDropItem(
                f"items[{position}]: price {spec.price_id!r} is not in drop {drop.id}; a drop's "
                "prices are fixed when it is created (change the quantities of "
                f"{', '.join(sorted(by_price))})"
            )
        wanted[spec.price_id] = spec.quantity
    moved = {p: q for p, q in wanted.items() if q != by_price[p].quantity}
    if moved and drop.mode == "raffle" and not drawn:
        # The draw counts the units under the drop's row lock (``raffles.draw``): a draw
        # running now is waited for and seen, and one after this waits and counts the new
        # quantities. A raffle has no claims before its draw, so no claim holds an item.
        await session.get(Drop, drop.id, populate_existing=True, with_for_update=True)
        drawn = drop.drawn_at is not None
    if moved and drawn:
        raise DropNotEditable(
            f"drop {drop.id} was drawn at {drop.drawn_at.isoformat() if drop.drawn_at else ''}; "
            "its units went to the draw's winners and cannot change",
            field="items",
        )
    changed = added = lowered = False
    # The items first, in key order, then the drop's row: the order a checkout's claim
    # takes them in (ADR 0012), so the two never wait for each other in a cycle (a
    # raffle's undrawn drop row first, as its draw takes it: no claim exists yet).
    for item in sorted((by_price[p] for p in moved), key=lambda row: row.id):
        quantity = moved[item.price_id]
        taken = (
            await session.execute(
                update(DropItem)
                .where(DropItem.id == item.id, DropItem.held + DropItem.sold <= quantity)
                .values(quantity=quantity)
                .returning(DropItem.held, DropItem.sold)
                .execution_options(synchronize_session=False)
            )
        ).one_or_none()
        if taken is None:
            now_taken = (
                await session.execute(
                    select(DropItem.held, DropItem.sold).where(DropItem.id == item.id)
                )
            ).one()
            raise DropQuantityBelowTaken(
                f"price {item.price_id}: {now_taken.held} unit(s) are held by open checkouts "
                f"and {now_taken.sold} sold; its quantity cannot go below "
                f"{now_taken.held + now_taken.sold}",
                price=item.price_id,
                held=now_taken.held,
                sold=now_taken.sold,
            )
        added = added or quantity > item.quantity
        lowered = lowered or quantity < item.quantity
        changed = True
    settings = (
        "name",
        "per_customer_limit",
        "reservation_minutes",
        "waitlist_hold_minutes",
        "claim_minutes",
    )
    for name in settings:
        if name in changes and getattr(drop, name) != changes[name]:
            setattr(drop, name, changes[name])
            changed = True
    if opens_at != drop.opens_at or closes_at != drop.closes_at:
        drop.opens_at, drop.closes_at = opens_at, closes_at
        changed = True
        await session.flush()
        await drop_events.reschedule(session, drop=drop, now=now)
        if drop.mode == "raffle":
            await raffles.reschedule_draw(session, drop=drop, now=now)
    if added:
        await drop_events.after_release(session, drop_ids={drop.id})
        await waitlists.units_returned(session, drop_ids=[drop.id], now=now)
    elif lowered:
        await drop_events.after_claim(session, drop=drop, now=now)  # sold out now?
    view = DropView(drop=drop, items=await _items(session, drop_id=drop.id))
    if changed:
        await drop_events.announce_updated(
            session, drop=drop, status=view.state(now), items=view.items, now=now
        )
    return view


async def get_drop(session: AsyncSession, *, creator_id: str, drop_id: str) -> DropView:
    drop = await session.get(Drop, drop_id, populate_existing=True)
    if drop is None or drop.creator_id != creator_id:
        raise DropNotFound(f"no drop {drop_id!r}")
    return DropView(drop=drop, items=await _items(session, drop_id=drop.id))


async def list_drops(session: AsyncSession, *, creator_id: str, limit: int) -> list[DropView]:
    """The creator's newest ``limit`` drops with their items (the dashboard's list)."""
    found = (
        (
            await session.execute(
                select(Drop)
                .where(Drop.creator_id == creator_id)
                .order_by(Drop.id.desc())
                .limit(limit)
            )
        )
        .scalars()
        .all()
    )
    return [DropView(drop=drop, items=await _items(session, drop_id=drop.id)) for drop in found]


async def list_drops_page(
    session: AsyncSession, *, creator_id: str, limit: int, starting_after: str | None
) -> Page[DropView]:
    """The creator's drops, newest first, with their items (two statements).

    Raises:
        InvalidCursor: ``starting_after`` is not one of the creator's drops.
    """
    page: Page[Drop] = await paginate(
        session,
        select(Drop).where(Drop.creator_id == creator_id),
        id_column=Drop.id,
        limit=limit,
        starting_after=starting_after,
    )
    by_drop: dict[str, list[DropItem]] = defaultdict(list)
    if page.data:
        rows = await session.execute(
            select(DropItem)
            .where(DropItem.drop_id.in_([drop.id for drop in page.data]))
            .order_by(DropItem.drop_id, DropItem.position)
        )
        for item in rows.scalars():
            by_drop[item.drop_id].append(item)
    return Page(
        data=[DropView(drop=drop, items=by_drop[drop.id]) for drop in page.data],
        has_more=page.has_more,
    )


async def _items(session: AsyncSession, *, drop_id: str) -> list[DropItem]:
    return list(
        (
            await session.execute(
                select(DropItem)
                .where(DropItem.drop_id == drop_id)
                .order_by(DropItem.position)
                .execution_options(populate_existing=True)
            )
        )
        .scalars()
        .all()
    )


def sold_in_a_drop(price_ids: Sequence[str]) -> ColumnElement[bool]:
    """An SQL condition: one of ``price_ids`` is sold in a drop (for the rate limit on
    checkout sessions for drops, evaluated in its own statement)."""
    return exists(select(DropItem.id).where(DropItem.price_id.in_(sorted(set(price_ids)))))


_DROPS_OF_PRICES = (
    select(Drop)
    .join(DropItem, DropItem.drop_id == Drop.id)
    .where(DropItem.price_id.in_(bindparam("price_ids", expanding=True)))
    .distinct()
)


async def drop_for_prices(
    session: AsyncSession, *, price_ids: Sequence[str], now: datetime
) -> Drop | None:
    """The drop a checkout session for ``price_ids`` buys from, if any of them is in one.
    Its prices sell only through the drop's window.

    Raises:
        DropNotOpen, DropClosed, InvalidRequest (prices of two drops in one session).
    """
    drops = (
        (await session.execute(_DROPS_OF_PRICES, {"price_ids": sorted(set(price_ids))}))
        .scalars()
        .all()
    )
    if not drops:
        return None
    if len(drops) > 1:
        raise InvalidRequest(
            f"the line items come from {len(drops)} drops; buy from one drop per session"
        )
    (drop,) = drops
    if now < drop.opens_at:
        raise DropNotOpen(
            f"drop {drop.id} opens at {drop.opens_at.isoformat()}",
            drop=drop.id,
            opens_at=drop.opens_at.isoformat(),
        )
    # A raffle's window is for entries; its winners buy after the draw (``claim``).
    if now >= drop.closes_at and drop.mode != "raffle":
        raise DropClosed(
            f"drop {drop.id} closed at {drop.closes_at.isoformat()}",
            drop=drop.id,
            closed_at=drop.closes_at.isoformat(),
        )
    return drop


def item_of_price(
    price_id: ColumnElement[str] | InstrumentedAttribute[str],
) -> tuple[ScalarSelect[int], ScalarSelect[int]]:
    """The drop item that sells ``price_id`` (None outside drops) and how many units it has
    left, as scalar subqueries to read with the price in one statement."""
    of_price = DropItem.price_id == price_id
    return (
        select(DropItem.id).where(of_price).scalar_subquery(),
        select(DropItem.quantity - DropItem.held - DropItem.sold).where(of_price).scalar_subquery(),
    )


@dataclass(frozen=True, slots=True)
class ClaimLine:
    price_id: str
    sku: str
    quantity: int
    # The drop item selling the price and what it had left when the price was read (None
    # for a price outside the drop): ``item_of_price``.
    drop_item_id: int | None = None
    left: int | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    """A buyer admitted to a drop (``admit``): the units wanted of each drop item, and the
    buyer's key the claim is counted under."""

    drop: Drop
    wanted: dict[int, int]
    skus: dict[int, str]
    key: str
    email: str | None


async def admit(
    session: AsyncSession, *, drop: Drop, email: str | None, lines: Sequence[ClaimLine]
) -> Admission:
    """The checks of a claim that need no checkout session and no lock on a drop item,
    made before the session is written: the buyer's email, the buyer's count against the
    per-customer limit (its conditional upsert), and, first come first served, whether the
    drop has the units left as read with the prices. A sold-out drop is answered from that
    read, without waiting for the item's row. The limit is checked before stock, so a buyer
    at the limit hears so whatever is left.

    Raises:
        DropBuyerEmailRequired (a limited drop and no email), DropLimitReached,
        OutOfStock (naming the SKU and what the drop has left of it).
    """
    wanted: dict[int, int] = defaultdict(int)
    skus: dict[int, str] = {}
    left: dict[int, int] = {}
    for line in lines:
        if line.drop_item_id is not None:
            wanted[line.drop_item_id] += line.quantity
            skus.setdefault(line.drop_item_id, line.sku)
            left[line.drop_item_id] = line.left or 0
    key = "" if email is None else buyer_key(email)
    admission = Admission(drop=drop, wanted=dict(wanted), skus=skus, key=key, email=email)
    if not wanted or drop.mode == "raffle":
        # A raffle's claim is its winner's offer (``claim``).
        return admission
    if email is None and drop.per_customer_limit is not None:
        raise DropBuyerEmailRequired(
            f"drop {drop.id} limits units per customer, so it needs the buyer's email when "
            "the session is created: send customer_email or customer"
        )
    if drop.per_customer_limit is not None:
        await _count_buyer(session, drop=drop, key=key, units=sum(wanted.values()))
    for item_id in sorted(wanted):
        if left[item_id] < wanted[item_id]:
            raise _sold_out(drop, sku=skus[item_id], left=left[item_id], wanted=wanted[item_id])
    return admission


def _sold_out(drop: Drop, *, sku: str, left: int, wanted: int) -> OutOfStock:
    return OutOfStock(
        f"{sku} has {left} left in drop {drop.id}; {wanted} asked for"
        if left
        else f"{sku} is sold out in drop {drop.id} ({wanted} asked for)",
        sku=sku,
        available=left,
        requested=wanted,
        drop=drop.id,
    )


async def claim(
    session: AsyncSession,
    *,
    admission: Admission,
    checkout_session_id: str,
    now: datetime,
    at_commit: bool = False,
) -> int:
    """Claim the admitted units for the session: a raffle winner's offer, the claim rows,
    then each drop item's ``held`` by a conditional update, in key order. The updates of
    the hot rows come last, so their locks are held for as little of the transaction as
    possible; with ``at_commit`` they are deferred to the unit of work's commit
    (``kit.db.defer_until_commit``, ADR 0024), and the commit raises their errors (the
    claim rows are then left to the session's flush, the commit's at the latest). The
    first that finds too little raises, and the caller's unit of work rolls back. Returns
    the units claimed.

    Raises:
        RaffleNotDrawn, RaffleOneUnit, NoRaffleOffer (a raffle drop), OutOfStock (naming
        the SKU and what the drop has left of it).
    """
    drop, wanted = admission.drop, admission.wanted
    if not wanted:
        return 0
    if drop.mode == "raffle":
        await raffles.claim_offer(
            session,
            drop=drop,
            checkout_session_id=checkout_session_id,
            email=admission.email,
            units=sum(wanted.values()),
            now=now,
        )
    session.add_all(
        DropClaim(
            creator_id=drop.creator_id,
            drop_id=drop.id,
            drop_item_id=item_id,
            checkout_session_id=checkout_session_id,
            buyer_key=admission.key,
            quantity=wanted[item_id],
            status="held",
            created_at=now,
            updated_at=now,
        )
        for item_id in sorted(wanted)
    )
    if at_commit:
        # The claims are written by the commit's flush, before the deferred updates.
        defer_until_commit(session, lambda last: _take_items(last, admission=admission, now=now))
    else:
        await session.flush()
        await _take_items(session, admission=admission, now=now)
    return sum(wanted.values())


async def _take_items(session: AsyncSession, *, admission: Admission, now: datetime) -> None:
    """Each drop item's ``held`` grows by a conditional update, in key order."""
    drop, wanted = admission.drop, admission.wanted
    emptied = False
    for item_id in sorted(wanted):
        n = wanted[item_id]
        left_after = (
            await session.execute(
                update(DropItem)
                .where(
                    DropItem.id == item_id, DropItem.quantity - DropItem.held - DropItem.sold >= n
                )
                .values(held=DropItem.held + n)
                .returning(DropItem.quantity - DropItem.held - DropItem.sold)
                .execution_options(synchronize_session=False)
            )
        ).scalar_one_or_none()
        emptied = emptied or left_after == 0
        if left_after is None:
            left = (
                await session.execute(
                    select(DropItem.quantity - DropItem.held - DropItem.sold).where(
                        DropItem.id == item_id
                    )
                )
            ).scalar_one()
            raise _sold_out(drop, sku=admission.skus[item_id], left=int(left), wanted=n)
    if emptied:
        await drop_events.after_claim(session, drop=drop, now=now)


@functools.cache
def _buyer_count(dialect: str) -> ReturningInsert[int]:
    """``_count_buyer``'s upsert for the dialect, built once."""
    table = cast(Table, DropBuyer.__table__)
    insert = (pg_insert if dialect == "postgresql" else sqlite_insert)(table)
    added = table.c.units + bindparam("b_units", type_=table.c.units.type)
    return insert.on_conflict_do_update(
        index_elements=[table.c.drop_id, table.c.buyer_key],
        set_={"units": added},
        where=added <= bindparam("b_limit", type_=table.c.units.type),
    ).returning(table.c.units)


async def _count_buyer(session: AsyncSession, *, drop: Drop, key: str, units: int) -> None:
    """``units`` more for the buyer, if that stays within the limit: an insert of the
    buyer's first units, or an update whose ``WHERE`` is the limit (one statement)."""
    limit = drop.per_customer_limit
    assert limit is not None
    counted = None
    if units <= limit:
        counted = (
            await session.execute(
                _buyer_count(session.get_bind().dialect.name),
                {
                    "creator_id": drop.creator_id,
                    "drop_id": drop.id,
                    "buyer_key": key,
                    "units": units,
                    "b_units": units,
                    "b_limit": limit,
                },
            )
        ).scalar_one_or_none()
    if counted is None:
        already = (
            await session.execute(
                select(DropBuyer.units).where(
                    DropBuyer.drop_id == drop.id, DropBuyer.buyer_key == key
                )
            )
        ).scalar_one_or_none() or 0
        raise DropLimitReached(
            f"drop {drop.id} sells at most {limit} per customer; this buyer holds or has "
            f"bought {already}, and asked for {units} more",
            drop=drop.id,
            per_customer_limit=limit,
            already=already,
        )


async def release(session: AsyncSession, *, checkout_session_id: str, now: datetime) -> int:
    """Give the session's held drop units back (it expired or was cancelled), and take
    them off the buyer's count; a raffle winner's offer is theirs again while it runs, or
    passes on. Returns how many."""
    await raffles.release_offer(session, checkout_session_id=checkout_session_id, now=now)
    moved = list(
        await session.execute(
            update(DropClaim)
            .where(DropClaim.checkout_session_id == checkout_session_id, DropClaim.status == "held")
            .values(status="released", updated_at=now)
            .returning(
                DropClaim.drop_id, DropClaim.drop_item_id, DropClaim.buyer_key, DropClaim.quantity
            )
            .execution_options(synchronize_session=False)
        )
    )
    if not moved:
        return 0
    per_buyer: dict[tuple[str, str], int] = defaultdict(int)
    per_item: dict[int, int] = defaultdict(int)
    for row in moved:
        per_buyer[(row.drop_id, row.buyer_key)] += row.quantity
        per_item[row.drop_item_id] += row.quantity
    for (drop_id, key), n in sorted(per_buyer.items()):
        # No row when the drop has no per-customer limit: nothing to take off.
        await session.execute(
            update(DropBuyer)
            .where(DropBuyer.drop_id == drop_id, DropBuyer.buyer_key == key)
            .values(units=DropBuyer.units - n)
            .execution_options(synchronize_session=False)
        )
    for item_id in sorted(per_item):
        await session.execute(
            update(DropItem)
            .where(DropItem.id == item_id)
            .values(held=DropItem.held - per_item[item_id])
            .execution_options(synchronize_session=False)
        )
    drop_ids = {row.drop_id for row in moved}
    await drop_events.after_release(session, drop_ids=drop_ids)
    await waitlists.after_release(
        session, checkout_session_id=checkout_session_id, drop_ids=drop_ids, now=now
    )
    return sum(per_item.values())


async def sell(session: AsyncSession, *, checkout_session_id: str, now: datetime) -> int:
    """The session was paid: its held drop units are sold (they stay on the buyer's
    count). Returns how many."""
    moved = list(
        await session.execute(
            update(DropClaim)
            .where(DropClaim.checkout_session_id == checkout_session_id, DropClaim.status == "held")
            .values(status="sold", updated_at=now)
            .returning(DropClaim.drop_item_id, DropClaim.quantity)
            .execution_options(synchronize_session=False)
        )
    )
    per_item: dict[int, int] = defaultdict(int)
    for row in moved:
        per_item[row.drop_item_id] += row.quantity
    for item_id in sorted(per_item):
        n = per_item[item_id]
        await session.execute(
            update(DropItem)
            .where(DropItem.id == item_id)
            .values(held=DropItem.held - n, sold=DropItem.sold + n)
            .execution_options(synchronize_session=False)
        )
    if moved:
        await waitlists.after_sale(session, checkout_session_id=checkout_session_id, now=now)
    return sum(per_item.values())


async def restock(session: AsyncSession, *, checkout_session_id: str, now: datetime) -> int:
    """A refund with ``restock`` returned the units the session bought: the drop may sell
    them again (``sold`` falls; the buyer's per-customer count stays, as for any refund),
    and whoever waits for them is offered them. Returns how many; 0 the second time."""
    moved = list(
        await session.execute(
            update(DropClaim)
            .where(DropClaim.checkout_session_id == checkout_session_id, DropClaim.status == "sold")
            .values(status="restocked", updated_at=now)
            .returning(DropClaim.drop_id, DropClaim.drop_item_id, DropClaim.quantity)
            .execution_options(synchronize_session=False)
        )
    )
    per_item: dict[int, int] = defaultdict(int)
    for row in moved:
        per_item[row.drop_item_id] += row.quantity
    for item_id in sorted(per_item):
        await session.execute(
            update(DropItem)
            .where(DropItem.id == item_id)
            .values(sold=DropItem.sold - per_item[item_id])
            .execution_options(synchronize_session=False)
        )
    if moved:
        drop_ids = {row.drop_id for row in moved}
        await drop_events.after_release(session, drop_ids=drop_ids)
        await waitlists.units_returned(session, drop_ids=drop_ids, now=now)
    return sum(per_item.values())


async def drops_by_price(session: AsyncSession, *, price_ids: Sequence[str]) -> dict[str, DropView]:
    """The drop each of ``price_ids`` is sold through, for prices in one (a read for
    store pages: nothing is claimed)."""
    if not price_ids:
        return {}
    items = (
        (
            await session.execute(
                select(DropItem)
                .where(
                    DropItem.drop_id.in_(
                        select(DropItem.drop_id).where(
                            DropItem.price_id.in_(sorted(set(price_ids)))
                        )
                    )
                )
                .order_by(DropItem.drop_id, DropItem.position)
            )
        )
        .scalars()
        .all()
    )
    by_drop: dict[str, list[DropItem]] = defaultdict(list)
    for item in items:
        by_drop[item.drop_id].append(item)
    found: dict[str, DropView] = {}
    for drop_id, drop_items in by_drop.items():
        drop = await session.get(Drop, drop_id)
        assert drop is not None
        view = DropView(drop=drop, items=drop_items)
        for item in drop_items:
            if item.price_id in price_ids:
                found[item.price_id] = view
    return found
