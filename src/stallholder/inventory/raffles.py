"""Raffle drops: entries during the window, a committed seed, a public draw, and a
purchase window for each winner that passes to the next entrant when it runs out
(``docs/raffles.md``; the draw itself is ``raffle_draw``).

A raffle drop's window ``[opens_at, closes_at)`` is for entries. At ``closes_at`` the
draw runs (due work, ``DRAW_KIND``): every entry gets its rank, and the first entrants,
one per unit the drop has, get an offer: one unit, bought through a checkout session
created before ``offer_expires_at`` (``claim_minutes`` after the offer). An offer that
runs out (``OFFER_KIND``) passes the unit to the next entrant in draw order; so does a
winner's checkout session that expires unpaid after the offer window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.events.service import emit
from stallholder.inventory import offers, raffle_draw
from stallholder.inventory.drop_rules import buyer_key
from stallholder.inventory.models import Drop, DropEntry, DropItem
from stallholder.kit import work
from stallholder.kit.errors import Conflict, InvalidRequest, NotFound
from stallholder.kit.ids import new_id

DRAW_KIND = "inventory.raffle_draw"
OFFER_KIND = "inventory.raffle_offer_expiry"


class DropNotARaffle(Conflict):
    slug = "drop-not-a-raffle"
    title = "The drop is first come, first served; it takes no entries"


class EntriesNotOpen(Conflict):
    slug = "raffle-entries-closed"
    title = "The raffle is not taking entries now"


class RaffleNotDrawn(Conflict):
    slug = "raffle-not-drawn"
    title = "The raffle has not been drawn yet"


class NoRaffleOffer(Conflict):
    slug = "raffle-offer-required"
    title = "Only a raffle winner with an open offer can buy from this drop"


class RaffleOneUnit(InvalidRequest):
    slug = "raffle-one-unit"
    title = "A raffle win buys one unit"


class DrawNotFound(NotFound):
    slug = "drop-not-found"
    title = "No such drop"


@dataclass(frozen=True, slots=True)
class DrawView:
    drop: Drop
    # Units the drop sells (the number of winners at the draw).
    units: int
    # Published entrants, in canonical (ascending) order.
    entrants: list[str]
    # The entrants offered a unit at the draw, in draw order (empty before it).
    winners: list[str]
    # Every entrant offered a unit so far (winners, then those units passed to), by rank.
    offered: list[str]


def _insert(session: AsyncSession):  # type: ignore[no-untyped-def]
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def commit_seed(drop: Drop) -> None:
    """Give a new raffle drop its seed (only its hash is shown until the draw)."""
    drop.seed = raffle_draw.new_seed()
    drop.seed_hash = raffle_draw.commitment(drop.seed)


async def schedule_draw(session: AsyncSession, *, drop: Drop, now: datetime) -> None:
    """Queue the raffle's draw at ``closes_at``."""
    await work.enqueue(
        session,
        kind=DRAW_KIND,
        payload={"drop_id": drop.id},
        due_at=drop.closes_at,
        now=now,
        dedupe_key=f"draw:{drop.id}",
        creator_id=drop.creator_id,
    )


async def reschedule_draw(session: AsyncSession, *, drop: Drop, now: datetime) -> None:
    """The raffle's ``closes_at`` moved (before the draw): so does its draw."""
    await work.reschedule(session, dedupe_key=f"draw:{drop.id}", due_at=drop.closes_at, now=now)


async def _raffle(session: AsyncSession, *, creator_id: str, drop_id: str) -> Drop:
    drop = await session.get(Drop, drop_id, populate_existing=True)
    if drop is None or drop.creator_id != creator_id:
        raise DrawNotFound(f"no drop {drop_id!r}")
    if drop.mode != "raffle":
        raise DropNotARaffle(f"drop {drop.id} is {drop.mode}; only raffle drops take entries")
    return drop


async def enter(
    session: AsyncSession, *, creator_id: str, drop_id: str, email: str, now: datetime
) -> DropEntry:
    """Enter the buyer (once per normalised email: entering again returns the entry).

    Raises:
        DrawNotFound, DropNotARaffle, EntriesNotOpen (before ``opens_at``, from
        ``closes_at`` on).
    """
    drop = await _raffle(session, creator_id=creator_id, drop_id=drop_id)
    if not drop.opens_at <= now < drop.closes_at:
        raise EntriesNotOpen(
            f"drop {drop.id} takes entries from {drop.opens_at.isoformat()} until "
            f"{drop.closes_at.isoformat()}",
            drop=drop.id,
            opens_at=drop.opens_at.isoformat(),
            closes_at=drop.closes_at.isoformat(),
        )
    key = buyer_key(email)
    await session.execute(
        _insert(session)(DropEntry)
        .values(
            id=new_id("ent"),
            creator_id=drop.creator_id,
            drop_id=drop.id,
            buyer_key=key,
            email=email.strip(),
            entrant=raffle_draw.entrant_id(drop_id=drop.id, buyer_key=key),
            status="entered",
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=[DropEntry.drop_id, DropEntry.buyer_key])
    )
    return (
        await session.execute(
            select(DropEntry)
            .where(DropEntry.drop_id == drop.id, DropEntry.buyer_key == key)
            .execution_options(populate_existing=True)
        )
    ).scalar_one()


async def draw(session: AsyncSession, *, drop_id: str, now: datetime) -> bool:
    """Run the draw once (a second call does nothing): rank every entry, and offer one
    unit each to as many entrants as the drop has units. Returns whether it ran now."""
    ran = (
        await session.execute(
            update(Drop)
            .where(Drop.id == drop_id, Drop.mode == "raffle", Drop.drawn_at.is_(None))
            .values(drawn_at=now)
            .returning(Drop.id)
            .execution_options(synchronize_session=False)
        )
    ).scalar_one_or_none()
    if ran is None:
        return False
    drop = await session.get(Drop, drop_id, populate_existing=True)
    assert drop is not None
    assert drop.seed is not None
    entries = {
        entry.entrant: entry
        for entry in (
            await session.execute(select(DropEntry).where(DropEntry.drop_id == drop_id))
        ).scalars()
    }
    for rank, entrant in enumerate(
        raffle_draw.draw_order(seed=drop.seed, entrants=entries), start=1
    ):
        entries[entrant].rank = rank
        entries[entrant].updated_at = now
    await session.flush()
    units = await _units_left(session, drop_id=drop_id)
    await offer_next(session, drop=drop, count=units, now=now)
    return True


async def _units_left(session: AsyncSession, *, drop_id: str) -> int:
    return int(
        (
            await session.execute(
                select(
                    func.coalesce(func.sum(DropItem.quantity - DropItem.held - DropItem.sold), 0)
                ).where(DropItem.drop_id == drop_id)
            )
        ).scalar_one()
    )


async def offer_next(session: AsyncSession, *, drop: Drop, count: int, now: datetime) -> int:
    """Offer a unit to each of the next ``count`` entrants in draw order who have had no
    offer; each offer is a conditional update on the entry's status, so two callers never
    offer one entrant twice. Returns how many were offered (fewer when entrants run out)."""
    offered = 0
    expires_at = now + timedelta(minutes=drop.claim_minutes)
    while offered < count:
        row = await offers.take_next(
            session,
            DropEntry,
            where=[DropEntry.drop_id == drop.id, DropEntry.rank.is_not(None)],
            order_by=[DropEntry.rank],
            waiting="entered",
            values={"status": "offered", "offer_expires_at": expires_at, "updated_at": now},
            returning=[DropEntry.id, DropEntry.email, DropEntry.rank],
        )
        if row is None:
            break
        offered += 1
        await work.enqueue(
            session,
            kind=OFFER_KIND,
            payload={"entry_id": row.id},
            due_at=expires_at,
            now=now,
            dedupe_key=f"offer:{row.id}",
            creator_id=drop.creator_id,
        )
        await emit(
            session,
            creator_id=drop.creator_id,
            type="drop.raffle_offer",
            data={
                "object": "raffle_offer",
                "drop": drop.id,
                "drop_name": drop.name,
                "entry": row.id,
                "email": row.email,
                "rank": row.rank,
                "expires_at": expires_at.isoformat(),
            },
            now=now,
        )
    return offered


async def expire_offer(session: AsyncSession, *, entry_id: str, now: datetime) -> bool:
    """An offer that ran out unused passes its unit to the next entrant. Does nothing for
    an offer that was taken up or is still running. Returns whether it passed."""
    passed = await offers.lapse(
        session,
        DropEntry,
        where=[DropEntry.id == entry_id, DropEntry.offer_expires_at <= now],
        now=now,
    )
    if passed is None:
        return False
    drop = await session.get(Drop, passed)
    assert drop is not None
    await offer_next(session, drop=drop, count=1, now=now)
    return True


async def claim_offer(
    session: AsyncSession,
    *,
    drop: Drop,
    checkout_session_id: str,
    email: str | None,
    units: int,
    now: datetime,
) -> None:
    """A checkout session for a raffle drop takes up its buyer's open offer.

    Raises:
        RaffleNotDrawn, RaffleOneUnit, NoRaffleOffer.
    """
    if drop.drawn_at is None:
        raise RaffleNotDrawn(
            f"drop {drop.id} is a raffle drawn at {drop.closes_at.isoformat()}; enter it at "
            f"POST /v1/drops/{drop.id}/entries and buy once you have won",
            drop=drop.id,
        )
    if units != 1:
        raise RaffleOneUnit(f"a raffle win buys one unit; the session asks for {units}")
    key = None if email is None else buyer_key(email)
    taken = (
        await session.execute(
            update(DropEntry)
            .where(
                DropEntry.drop_id == drop.id,
                DropEntry.buyer_key == key,
                DropEntry.status == "offered",
                DropEntry.offer_expires_at > now,
            )
            .values(status="claimed", checkout_session_id=checkout_session_id, updated_at=now)
            .returning(DropEntry.id)
            .execution_options(synchronize_session=False)
        )
    ).scalar_one_or_none()
    if taken is None:
        raise NoRaffleOffer(
            f"drop {drop.id} sells only to raffle winners with an open offer; "
            + ("send the winner's customer_email" if email is None else f"{email} has none"),
            drop=drop.id,
        )


async def release_offer(session: AsyncSession, *, checkout_session_id: str, now: datetime) -> None:
    """The winner's session ended unpaid: the offer is theirs again while it runs, and
    passes to the next entrant once it has run out."""
    entry = (
        await session.execute(
            select(DropEntry).where(
                DropEntry.checkout_session_id == checkout_session_id,
                DropEntry.status == "claimed",
            )
        )
    ).scalar_one_or_none()
    if entry is None:
        return
    assert entry.offer_expires_at is not None
    if entry.offer_expires_at > now:
        entry.status, entry.checkout_session_id, entry.updated_at = "offered", None, now
        await session.flush()
        return
    entry.status, entry.updated_at = "passed", now
    await session.flush()
    drop = await session.get(Drop, entry.drop_id)
    assert drop is not None
    await offer_next(session, drop=drop, count=1, now=now)


async def get_draw(session: AsyncSession, *, creator_id: str, drop_id: str) -> DrawView:
    """What the raffle publishes: every entrant's pseudonym, and once drawn the seed, the
    winners and the entrants units passed to.

    Raises:
        DrawNotFound, DropNotARaffle.
    """
    drop = await _raffle(session, creator_id=creator_id, drop_id=drop_id)
    rows = (
        await session.execute(
            select(DropEntry.entrant, DropEntry.rank, DropEntry.status).where(
                DropEntry.drop_id == drop.id
            )
        )
    ).all()
    entrants = sorted(row.entrant for row in rows)
    offered = [
        row.entrant
        for row in sorted((r for r in rows if r.status != "entered"), key=lambda r: r.rank or 0)
    ]
    winners: list[str] = []
    total = int(
        (
            await session.execute(
                select(func.coalesce(func.sum(DropItem.quantity), 0)).where(
                    DropItem.drop_id == drop.id
                )
            )
        ).scalar_one()
    )
    if drop.drawn_at is not None:
        ranked = sorted((r for r in rows if r.rank is not None), key=lambda r: r.rank or 0)
        winners = [row.entrant for row in ranked[:total]]
    return DrawView(drop=drop, units=total, entrants=entrants, winners=winners, offered=offered)
