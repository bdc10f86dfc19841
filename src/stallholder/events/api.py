"""HTTP routes for events and outgoing webhooks."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from stallholder.accounts.auth import SecretCreatorDep
from stallholder.events import service, webhooks
from stallholder.events.schemas import (
    EventOut,
    Redeliver,
    RotateSecret,
    WebhookEndpointCreate,
    WebhookEndpointOut,
    WebhookEndpointUpdate,
    WebhookEndpointWithSecret,
    delivery_out,
    endpoint_out,
    endpoint_with_secret,
    event_out,
)
from stallholder.kit.http import NowDep, SessionDep, SettingsDep
from stallholder.kit.openapi import documents
from stallholder.kit.pagination import DEFAULT_LIMIT, MAX_LIMIT
from stallholder.kit.schemas import ListOut

router = APIRouter(prefix="/v1", tags=["events"])


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


@router.post("/webhook_endpoints", status_code=201, response_model=WebhookEndpointWithSecret)
async def create_webhook_endpoint(
    body: WebhookEndpointCreate,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
) -> WebhookEndpointWithSecret:
    """A new endpoint; the response is the only one that shows its ``secret``."""
    endpoint = await webhooks.create_endpoint(
        session,
        creator_id=creator_id,
        url=body.url,
        event_types=body.events,
        description=body.description,
        allow_private=settings.allow_private_webhook_targets,
        now=now,
    )
    return endpoint_with_secret(endpoint)


@router.get("/webhook_endpoints", response_model=ListOut)
async def list_webhook_endpoints(
    creator_id: SecretCreatorDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> ListOut:
    page = await webhooks.list_endpoints(
        session, creator_id=creator_id, limit=limit, starting_after=starting_after
    )
    return ListOut(data=[endpoint_out(e) for e in page.data], has_more=page.has_more)


@router.get("/webhook_endpoints/{endpoint_id}", response_model=WebhookEndpointOut)
async def get_webhook_endpoint(
    endpoint_id: str, creator_id: SecretCreatorDep, session: SessionDep
) -> WebhookEndpointOut:
    return endpoint_out(
        await webhooks.get_endpoint(session, creator_id=creator_id, endpoint_id=endpoint_id)
    )


@documents(webhooks.WebhookEndpointDeleted)
async def changes_an_endpoint() -> None:
    """Documents the 409 of a change to a deleted endpoint."""


@router.patch(
    "/webhook_endpoints/{endpoint_id}",
    response_model=WebhookEndpointOut,
    dependencies=[Depends(changes_an_endpoint)],
)
async def update_webhook_endpoint(
    endpoint_id: str,
    body: WebhookEndpointUpdate,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
) -> WebhookEndpointOut:
    """Change the URL, filter or description; ``status: "enabled"`` re-enables a disabled
    endpoint (its pending retries resume). A deleted endpoint cannot be changed (409
    ``webhook-endpoint-deleted``)."""
    endpoint = await webhooks.update_endpoint(
        session,
        creator_id=creator_id,
        endpoint_id=endpoint_id,
        changes=body.model_dump(exclude_unset=True),
        allow_private=settings.allow_private_webhook_targets,
        now=now,
    )
    return endpoint_out(endpoint)


@router.delete("/webhook_endpoints/{endpoint_id}", response_model=WebhookEndpointOut)
async def delete_webhook_endpoint(
    endpoint_id: str, creator_id: SecretCreatorDep, session: SessionDep
) -> WebhookEndpointOut:
    """Stop sending to the endpoint; pending deliveries end as failed."""
    await webhooks.delete_endpoint(session, creator_id=creator_id, endpoint_id=endpoint_id)
    return endpoint_out(
        await webhooks.get_endpoint(session, creator_id=creator_id, endpoint_id=endpoint_id)
    )


@router.post(
    "/webhook_endpoints/{endpoint_id}/rotate_secret", response_model=WebhookEndpointWithSecret
)
async def rotate_webhook_secret(
    endpoint_id: str,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    now: NowDep,
    body: RotateSecret | None = None,
) -> WebhookEndpointWithSecret:
    """A new secret. Until ``secret_rotation_ends`` deliveries carry a signature from the
    old secret too, so a receiver can switch whenever it likes in that window."""
    overlap = timedelta(seconds=(body or RotateSecret()).expire_previous_in_seconds)
    endpoint = await webhooks.rotate_secret(
        session, creator_id=creator_id, endpoint_id=endpoint_id, overlap=overlap, now=now
    )
    return endpoint_with_secret(endpoint)


@router.get("/webhook_endpoints/{endpoint_id}/deliveries", response_model=ListOut)
async def list_webhook_deliveries(
    endpoint_id: str,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    event: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> ListOut:
    """The delivery log, newest first: each delivery with every attempt's status code,
    latency and response excerpt."""
    page = await webhooks.list_deliveries(
        session,
        creator_id=creator_id,
        endpoint_id=endpoint_id,
        event_id=event,
        limit=limit,
        starting_after=starting_after,
    )
    attempts = await webhooks.attempts_of(session, [d.id for d in page.data])
    return ListOut(
        data=[delivery_out(d, attempts[d.id]) for d in page.data], has_more=page.has_more
    )


@router.post("/events/{event_id}/redeliver", response_model=ListOut)
async def redeliver_event(
    event_id: str,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    now: NowDep,
    body: Redeliver | None = None,
) -> ListOut:
    """Queue the event again (same ``webhook-id``) to one endpoint or every enabled one
    whose filter takes it; returns the new deliveries."""
    deliveries = await webhooks.redeliver(
        session,
        creator_id=creator_id,
        event_id=event_id,
        endpoint_id=(body or Redeliver()).endpoint,
        now=now,
    )
    return ListOut(data=[delivery_out(d, []) for d in deliveries], has_more=False)
