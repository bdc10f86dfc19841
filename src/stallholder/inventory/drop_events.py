"""The ``drop.opened``, ``drop.sold_out`` and ``drop.closed`` events.

A drop's state is computed when read (``drop_rules.drop_state``); these events announce
its changes. ``drop.opened`` and ``drop.closed`` come from due work at ``opens_at`` and
``closes_at``; ``drop.sold_out`` from the claim that took the last unit. Each is a
conditional update of ``drops.announced`` (the last state announced), so each is emitted
once however often its work runs, and never out of order: a drop that sold out announces
``drop.closed`` once at ``closes_at``; one whose held units come back (an expiry) goes back
to ``open`` silently and announces ``drop.sold_out`` again when it sells out again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.events.service import emit
from stallholder.inventory.models import Drop, DropItem
from stallholder.kit import work

OPEN_KIND = "inventory.drop_opened"
CLOSE_KIND = "inventory.drop_closed"


async def schedule(session: AsyncSession, *, drop: Drop, now: datetime) -> None:
    """Queue the drop's opening and closing announcements."""
    for kind, due_at in ((OPEN_KIND, drop.opens_at), (CLOSE_KIND, drop.closes_at)):
        await work.enqueue(
            session,
            kind=kind,
            payload={"drop_id": drop.id},
            due_at=due_at,
            now=now,
            dedupe_key=f"{kind}:{drop.id}",
            creator_id=drop.creator_id,
        )


async def reschedule(session: AsyncSession, *, drop: Drop, now: datetime) -> None:
    """The drop's window moved: its announcements move with it (one still to come)."""
    for kind, due_at in ((OPEN_KIND, drop.opens_at), (CLOSE_KIND, drop.closes_at)):
        await work.reschedule(session, dedupe_key=f"{kind}:{drop.id}", due_at=due_at, now=now)


async def _remaining(session: AsyncSession, *, drop_id: str) -> int:
    return int(
        (
            await session.execute(
                select(
                    func.coalesce(func.sum(DropItem.quantity - DropItem.held - DropItem.sold), 0)
                ).where(DropItem.drop_id == drop_id)
            )
        ).scalar_one()
    )


async def _announce(
    session: AsyncSession, *, drop_id: str, to: str, when: Any, event: str, now: datetime
) -> bool:
    drop = (
        await session.execute(
            update(Drop)
            .where(Drop.id == drop_id, when)
            .values(announced=to)
            .returning(Drop)
            .execution_options(synchronize_session=False, populate_existing=True)
        )
    ).scalar_one_or_none()
    if drop is None:
        return False
    remaining = await _remaining(session, drop_id=drop_id)
    await emit(
        session,
        creator_id=drop.creator_id,
        type=event,
        data={
            "object": "drop",
            "id": drop.id,
            "name": drop.name,
            "mode": drop.mode,
            "status": to,
            "opens_at": drop.opens_at.isoformat(),
            "closes_at": drop.closes_at.isoformat(),
            "remaining": remaining,
        },
        now=now,
    )
    return True


async def announce_updated(
    session: AsyncSession, *, drop: Drop, status: str, items: list[DropItem], now: datetime
) -> None:
    """``drop.updated``: the creator changed the drop (its window, limits or quantities)."""
    await emit(
        session,
        creator_id=drop.creator_id,
        type="drop.updated",
        data={
            "object": "drop",
            "id": drop.id,
            "name": drop.name,
            "mode": drop.mode,
            "status": status,
            "opens_at": drop.opens_at.isoformat(),
            "closes_at": drop.closes_at.isoformat(),
            "per_customer_limit": drop.per_customer_limit,
            "remaining": sum(item.quantity - item.held - item.sold for item in items),
            "items": [{"price": item.price_id, "quantity": item.quantity} for item in items],
        },
        now=now,
    )


async def announce_opened(session: AsyncSession, *, drop_id: str, now: datetime) -> bool:
    """``drop.opened``, once, at ``opens_at``."""
    return await _announce(
        session,
        drop_id=drop_id,
        to="open",
        when=Drop.announced.is_(None),
        event="drop.opened",
        now=now,
    )


async def announce_closed(session: AsyncSession, *, drop_id: str, now: datetime) -> bool:
    """``drop.closed``, once, at ``closes_at`` (an unannounced opening is announced first,
    so a subscriber always sees ``drop.opened`` before ``drop.closed``)."""
    await announce_opened(session, drop_id=drop_id, now=now)
    return await _announce(
        session,
        drop_id=drop_id,
        to="closed",
        when=Drop.announced.is_distinct_from("closed"),
        event="drop.closed",
        now=now,
    )


async def after_claim(session: AsyncSession, *, drop: Drop, now: datetime) -> None:
    """A claim may have taken the drop's last unit: announce ``drop.sold_out`` once."""
    if await _remaining(session, drop_id=drop.id) > 0:
        return
    await announce_opened(session, drop_id=drop.id, now=now)
    await _announce(
        session,
        drop_id=drop.id,
        to="sold_out",
        when=Drop.announced == "open",
        event="drop.sold_out",
        now=now,
    )


async def after_release(session: AsyncSession, *, drop_ids: set[str]) -> None:
    """Units came back: a sold-out drop is open again (silently; its next sell-out is
    announced again)."""
    for drop_id in sorted(drop_ids):
        await session.execute(
            update(Drop)
            .where(Drop.id == drop_id, Drop.announced == "sold_out")
            .values(announced="open")
            .execution_options(synchronize_session=False)
        )
