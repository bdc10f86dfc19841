"""Due work of the events domain: dispatching the outbox to its consumers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.events import service
from stallholder.events.models import Event

Consumer = Callable[[AsyncSession, Event, datetime], Awaitable[None]]


async def dispatch_events(
    session: AsyncSession, now: datetime, *, consumers: Sequence[Consumer], batch: int = 100
) -> int:
    """Hand each undispatched event to every consumer, then mark it dispatched.

    All in one transaction: the consumers' writes (webhook deliveries, emails) commit
    together with ``dispatched_at``, so an event is fanned out exactly once. Consumers
    must only write rows; the effects themselves run later from those rows.
    """
    events = await service.claim_undispatched(session, limit=batch)
    for event in events:
        for consume in consumers:
            await consume(session, event, now)
        event.dispatched_at = now
    await session.flush()
    return len(events)
