"""Writing events into the outbox and reading them back."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.events.models import Event
from stallholder.events.types import API_VERSION, EVENT_TYPES
from stallholder.kit.errors import NotFound
from stallholder.kit.ids import new_id
from stallholder.kit.pagination import Page, paginate
from stallholder.kit.work import wake_after_commit


class EventNotFound(NotFound):
    slug = "event-not-found"
    title = "No such event"


async def emit(
    session: AsyncSession, *, creator_id: str, type: str, data: dict[str, Any], now: datetime
) -> Event:
    """Record an event in the caller's transaction: it exists if and only if the change does.

    The event is added to the session and written by its next flush (the caller's, an
    autoflush, or the commit), so the events of one change go in one multi-row insert.
    """
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type!r}")
    event = Event(
        id=new_id("evt"),
        creator_id=creator_id,
        type=type,
        api_version=API_VERSION,
        data=data,
        created_at=now,
    )
    session.add(event)
    # The worker dispatches the outbox (its main loop; no lane waits for events).
    wake_after_commit(session, kinds=())
    return event


class EventFields(Protocol):
    """What an envelope is made of: an ``Event``, or a row of its columns."""

    @property
    def id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def api_version(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def data(self) -> dict[str, Any]: ...


def envelope(event: EventFields) -> dict[str, Any]:
    """The stable, versioned JSON body of an event, as webhooks and the API send it."""
    return {
        "id": event.id,
        "object": "event",
        "type": event.type,
        "api_version": event.api_version,
        "created": event.created_at.isoformat().replace("+00:00", "Z"),
        "data": {"object": event.data},
    }


async def get_event(session: AsyncSession, *, creator_id: str, event_id: str) -> Event:
    event = await session.get(Event, event_id)
    if event is None or event.creator_id != creator_id:
        raise EventNotFound(f"no event {event_id!r}")
    return event


async def list_events(
    session: AsyncSession,
    *,
    creator_id: str,
    type: str | None,
    limit: int,
    starting_after: str | None,
) -> Page[Event]:
    statement = select(Event).where(Event.creator_id == creator_id)
    if type is not None:
        statement = statement.where(Event.type == type)
    return await paginate(
        session, statement, id_column=Event.id, limit=limit, starting_after=starting_after
    )


async def mark_dispatched(
    session: AsyncSession, *, event_ids: Sequence[str], now: datetime
) -> None:
    """Stamp ``dispatched_at`` on the events in one statement."""
    await session.execute(
        update(Event)
        .where(Event.id.in_(event_ids))
        .values(dispatched_at=now)
        .execution_options(synchronize_session=False)
    )


async def claim_undispatched(session: AsyncSession, *, limit: int) -> list[Event]:
    """Oldest events not yet dispatched, locked for this worker (``SKIP LOCKED``)."""
    statement = (
        select(Event)
        .where(Event.dispatched_at.is_(None))
        .order_by(Event.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await session.execute(statement)).scalars())
