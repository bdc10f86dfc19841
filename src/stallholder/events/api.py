"""HTTP routes for events."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from stallholder.accounts.auth import SecretCreatorDep
from stallholder.events import service
from stallholder.events.models import Event
from stallholder.events.schemas import DataOut, EventOut
from stallholder.kit.http import SessionDep
from stallholder.kit.pagination import DEFAULT_LIMIT, MAX_LIMIT
from stallholder.kit.schemas import ListOut

router = APIRouter(prefix="/v1", tags=["events"])


def event_out(event: Event) -> EventOut:
    return EventOut(
        id=event.id,
        type=event.type,
        api_version=event.api_version,
        created=event.created_at,
        data=DataOut(object=event.data),
    )


@router.get("/events", response_model=ListOut)
async def list_events(
    creator_id: SecretCreatorDep,
    session: SessionDep,
    type: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> ListOut:
    """The creator's events, newest first; ``type`` filters by event type."""
    page = await service.list_events(
        session, creator_id=creator_id, type=type, limit=limit, starting_after=starting_after
    )
    return ListOut(data=[event_out(e) for e in page.data], has_more=page.has_more)


@router.get("/events/{event_id}", response_model=EventOut)
async def get_event(event_id: str, creator_id: SecretCreatorDep, session: SessionDep) -> EventOut:
    return event_out(await service.get_event(session, creator_id=creator_id, event_id=event_id))
