"""Due work of drops: announcing a drop's opening and closing, a raffle's draw at its
``closes_at``, and each winner's offer running out (its unit passes to the next entrant)."""

from __future__ import annotations

from typing import Any

from stallholder.inventory import drop_events, raffles
from stallholder.kit.work import Claimed, Context, Kind


async def draw_raffle(context: Context[Any], item: Claimed) -> None:
    """Run the raffle's draw (once; a repeat does nothing)."""
    async with context.database.unit_of_work() as session:
        await raffles.draw(session, drop_id=str(item.payload["drop_id"]), now=context.clock.now())


async def expire_raffle_offer(context: Context[Any], item: Claimed) -> None:
    """Pass an offer that ran out unused to the next entrant (nothing if it was used)."""
    async with context.database.unit_of_work() as session:
        await raffles.expire_offer(
            session, entry_id=str(item.payload["entry_id"]), now=context.clock.now()
        )


async def announce_opened(context: Context[Any], item: Claimed) -> None:
    """``drop.opened`` at ``opens_at`` (once)."""
    async with context.database.unit_of_work() as session:
        await drop_events.announce_opened(
            session, drop_id=str(item.payload["drop_id"]), now=context.clock.now()
        )


async def announce_closed(context: Context[Any], item: Claimed) -> None:
    """``drop.closed`` at ``closes_at`` (once)."""
    async with context.database.unit_of_work() as session:
        await drop_events.announce_closed(
            session, drop_id=str(item.payload["drop_id"]), now=context.clock.now()
        )


DRAW_RAFFLE: Kind[Any] = Kind(name=raffles.DRAW_KIND, handler=draw_raffle)
EXPIRE_RAFFLE_OFFER: Kind[Any] = Kind(
    name=raffles.OFFER_KIND, handler=expire_raffle_offer, batch_size=50
)


ANNOUNCE_OPENED: Kind[Any] = Kind(name=drop_events.OPEN_KIND, handler=announce_opened)
ANNOUNCE_CLOSED: Kind[Any] = Kind(name=drop_events.CLOSE_KIND, handler=announce_closed)


def kinds() -> list[Kind[Any]]:
    return [DRAW_RAFFLE, EXPIRE_RAFFLE_OFFER, ANNOUNCE_OPENED, ANNOUNCE_CLOSED]
