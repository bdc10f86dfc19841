"""The dashboard's webhooks page (``/dashboard/webhooks``): the creator's endpoints with
their latest deliveries, a form that adds one, and buttons that disable, enable and
delete one, through the services of the ``/v1/webhook_endpoints`` routes
(``events.webhooks``). A new endpoint's signing secret is shown once, on the page that
answers the form; the SSRF guard's refusal is shown on the form. "Roll secret" makes a
new signing secret (as ``POST /v1/webhook_endpoints/{id}/rotate_secret``), shown once
too, with the old one signing beside it for the time the creator picks. "Edit" changes an
endpoint's URL, description and event types (as ``PATCH /v1/webhook_endpoints/{id}``) on
a page of its own; its secret and log stay."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from stallholder.accounts import service as accounts
from stallholder.accounts.models import Creator
from stallholder.events import webhooks
from stallholder.events.models import WebhookEndpoint
from stallholder.events.schemas import WebhookEndpointCreate, WebhookEndpointUpdate
from stallholder.events.types import EVENT_TYPES
from stallholder.kit.errors import DomainError
from stallholder.kit.http import NowDep, SessionDep, SettingsDep, get_database
from stallholder.web.dashboard import PAGE_SIZE, current_creator, render_page
from stallholder.web.dashboard_auth import sign_in_redirect, signed_in_creator
from stallholder.web.security import CsrfProtected

router = APIRouter(include_in_schema=False, dependencies=[CsrfProtected])

RECENT_DELIVERIES = 10
ALL_EVENTS = "*"
# How long the old secret keeps signing after a roll: the choices of the form, in seconds
# (the API takes any number up to 7 days). 24 hours is the default, as in the API.
ROLL_OVERLAPS = {
    "0": "Stop now",
    "3600": "1 hour",
    "86400": "24 hours",
    "604800": "7 days",
}
DEFAULT_ROLL_OVERLAP = "86400"


async def _webhooks_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    creator: Creator,
    *,
    form: dict[str, Any] | None = None,
    errors: list[str] | None = None,
    created: WebhookEndpoint | None = None,
    rolled: WebhookEndpoint | None = None,
    status_code: int = 200,
) -> Response:
    endpoints = await webhooks.list_endpoints(
        session, creator_id=creator.id, limit=PAGE_SIZE, starting_after=None
    )
    latest = await webhooks.latest_deliveries(
        session,
        creator_id=creator.id,
        endpoint_ids=[endpoint.id for endpoint in endpoints.data],
        per_endpoint=RECENT_DELIVERIES,
    )
    rows = [
        {"endpoint": endpoint, "deliveries": latest[endpoint.id]} for endpoint in endpoints.data
    ]
    return await render_page(
        request,
        settings,
        creator,
        "dashboard_webhooks.html",
        {
            "rows": rows,
            "event_types": sorted(EVENT_TYPES.items()),
            "form": form or {"events": []},
            "errors": errors or [],
            "created": created,
            "rolled": rolled,
            "roll_overlaps": ROLL_OVERLAPS,
            "default_roll_overlap": DEFAULT_ROLL_OVERLAP,
        },
        status_code=status_code,
    )


@router.get("/dashboard/webhooks", response_class=HTMLResponse)
async def webhooks_page(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    creator = await current_creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    return await _webhooks_page(request, session, settings, creator)


def _messages(error: ValidationError) -> list[str]:
    names = {"url": "URL", "events": "event types", "description": "description"}
    messages = []
    for problem in error.errors():
        field = next((names[str(p)] for p in problem["loc"] if str(p) in names), None)
        text = str(problem["msg"]).removeprefix("Value error, ")
        if field == "event types" and problem["type"] == "too_short":
            text = "tick at least one (or all events)"
        messages.append(f"{field}: {text}" if field else text)
    return messages


def _chosen_events(events: list[str] | None) -> list[str]:
    """The ticked event types; "All events" wins over single types ticked beside it."""
    chosen = [name.strip() for name in (events or [])[:100]]
    return [ALL_EVENTS] if ALL_EVENTS in chosen else chosen


@router.post("/dashboard/webhooks", response_class=HTMLResponse)
async def create_endpoint(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    # Generous bounds here; the schema says what is too long, on the form.
    url: Annotated[str, Form(max_length=10_000)] = "",
    description: Annotated[str, Form(max_length=10_000)] = "",
    events: Annotated[list[str] | None, Form()] = None,
) -> Response:
    """An endpoint, as ``POST /v1/webhook_endpoints`` adds one; the answer is the only
    page that shows its signing secret. The URL's host is resolved (the SSRF guard)
    before the request's unit of work is first used: on SQLite a transaction holds the
    one write lock, and a slow name server must not hold it. A mistake or a refused URL
    shows the form again with what was typed and keeps nothing."""
    creator_id = signed_in_creator(request)
    if creator_id is None:
        return sign_in_redirect(request)
    async with get_database(request).read() as reading:
        try:
            await accounts.get_creator(reading, creator_id)
        except accounts.CreatorNotFound:  # deleted since: sign in again
            request.session.clear()
            return sign_in_redirect(request)
    chosen = _chosen_events(events)
    typed = {"url": url, "description": description, "events": chosen}
    try:
        body = WebhookEndpointCreate.model_validate(
            {"url": url.strip(), "events": chosen, "description": description.strip() or None}
        )
        endpoint = await webhooks.create_endpoint(
            session,
            creator_id=creator_id,
            url=body.url,
            event_types=body.events,
            description=body.description,
            allow_private=settings.allow_private_webhook_targets,
            now=now,
        )
    except (ValidationError, DomainError) as error:
        creator = await current_creator(request, session)
        if creator is None:
            return sign_in_redirect(request)
        if isinstance(error, DomainError):
            messages, status = [error.detail], error.status
        else:
            messages, status = _messages(error), 422
        return await _webhooks_page(
            request, session, settings, creator, form=typed, errors=messages, status_code=status
        )
    creator = await accounts.get_creator(session, creator_id)
    return await _webhooks_page(request, session, settings, creator, created=endpoint)


@router.post("/dashboard/webhooks/{endpoint_id}/roll", response_class=HTMLResponse)
async def roll_secret(
    endpoint_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    overlap: Annotated[str, Form(max_length=100)] = DEFAULT_ROLL_OVERLAP,
) -> Response:
    """A new signing secret, shown once on the page that answers; the old one signs each
    delivery beside it until the chosen time has passed ("Stop now": at once), so the
    receiver can switch without missing an event. A deleted endpoint has no secret in
    use: the service refuses it (a 409 page). Another creator's endpoint is a 404 page."""
    creator = await current_creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    if overlap not in ROLL_OVERLAPS:
        await webhooks.get_endpoint(session, creator_id=creator.id, endpoint_id=endpoint_id)
        message = (
            "How long the old secret keeps signing: choose one of "
            f"{', '.join(ROLL_OVERLAPS.values())}."
        )
        return await _webhooks_page(
            request, session, settings, creator, errors=[message], status_code=422
        )
    try:
        rolled = await webhooks.rotate_secret(
            session,
            creator_id=creator.id,
            endpoint_id=endpoint_id,
            overlap=timedelta(seconds=int(overlap)),
            now=now,
        )
    except webhooks.WebhookEndpointDeleted as deleted:
        return await _webhooks_page(
            request, session, settings, creator, errors=[deleted.detail], status_code=409
        )
    return await _webhooks_page(request, session, settings, creator, rolled=rolled)


async def _edit_page(
    request: Request,
    settings: SettingsDep,
    creator: Creator,
    endpoint: WebhookEndpoint,
    *,
    form: dict[str, Any],
    errors: list[str] | None = None,
    status_code: int = 200,
) -> Response:
    return await render_page(
        request,
        settings,
        creator,
        "dashboard_webhook_edit.html",
        {
            "endpoint": endpoint,
            "event_types": sorted(EVENT_TYPES.items()),
            "form": form,
            "errors": errors or [],
        },
        status_code=status_code,
    )


@router.get("/dashboard/webhooks/{endpoint_id}/edit", response_class=HTMLResponse)
async def edit_page(
    endpoint_id: str, request: Request, session: SessionDep, settings: SettingsDep
) -> Response:
    """The endpoint's URL, description and event types in a form. A deleted endpoint
    cannot be changed (a 409 page); another creator's is a 404 page."""
    creator = await current_creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    endpoint = await webhooks.get_endpoint(session, creator_id=creator.id, endpoint_id=endpoint_id)
    if endpoint.status == "deleted":
        raise webhooks.WebhookEndpointDeleted(
            f"webhook endpoint {endpoint.url} was deleted and cannot be changed; add a new one"
        )
    form = {
        "url": endpoint.url,
        "description": endpoint.description or "",
        "events": list(endpoint.events),
    }
    return await _edit_page(request, settings, creator, endpoint, form=form)


@router.post("/dashboard/webhooks/{endpoint_id}/edit", response_class=HTMLResponse)
async def edit_endpoint(
    endpoint_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    url: Annotated[str, Form(max_length=10_000)] = "",
    description: Annotated[str, Form(max_length=10_000)] = "",
    events: Annotated[list[str] | None, Form()] = None,
) -> Response:
    """Change the URL, description and event types, as ``PATCH
    /v1/webhook_endpoints/{id}`` (the service checks the new URL with the SSRF guard and
    the event types before it locks or changes the endpoint); pending deliveries go to
    the new URL. A mistake shows the form again with what was typed and changes nothing."""
    creator = await current_creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    chosen = _chosen_events(events)
    typed = {"url": url, "description": description, "events": chosen}
    endpoint = await webhooks.get_endpoint(session, creator_id=creator.id, endpoint_id=endpoint_id)
    try:
        body = WebhookEndpointUpdate.model_validate(
            {"url": url.strip(), "events": chosen, "description": description.strip() or None}
        )
        endpoint = await webhooks.update_endpoint(
            session,
            creator_id=creator.id,
            endpoint_id=endpoint.id,
            changes=body.model_dump(exclude_unset=True),
            allow_private=settings.allow_private_webhook_targets,
            now=now,
        )
    except (ValidationError, DomainError) as error:
        if isinstance(error, DomainError):
            messages, status = [error.detail], error.status
        else:
            messages, status = _messages(error), 422
        return await _edit_page(
            request,
            settings,
            creator,
            endpoint,
            form=typed,
            errors=messages,
            status_code=status,
        )
    return RedirectResponse(f"/dashboard/webhooks#endpoint-{endpoint.id}", status_code=303)


@router.post("/dashboard/webhooks/{endpoint_id}/{action}", response_class=HTMLResponse)
async def endpoint_action(
    endpoint_id: str,
    action: Literal["disable", "enable", "delete"],
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    confirm: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """Disable or enable an endpoint (as ``PATCH /v1/webhook_endpoints/{id}`` with
    ``status``: enabling resumes its pending retries), or delete it (as ``DELETE``, after
    ticking a confirmation: it cannot be undone; its log stays). Another creator's
    endpoint is a 404 page."""
    creator = await current_creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    endpoint = await webhooks.get_endpoint(session, creator_id=creator.id, endpoint_id=endpoint_id)
    if action == "delete":
        if not confirm:
            return await _webhooks_page(
                request,
                session,
                settings,
                creator,
                errors=[
                    f"Tick the box to delete {endpoint.url}: it stops receiving events at "
                    "once and cannot be enabled again."
                ],
                status_code=422,
            )
        if endpoint.status != "deleted":
            await webhooks.delete_endpoint(session, creator_id=creator.id, endpoint_id=endpoint.id)
    elif endpoint.status != "deleted":  # a deleted endpoint stays deleted
        await webhooks.update_endpoint(
            session,
            creator_id=creator.id,
            endpoint_id=endpoint.id,
            changes={"status": "disabled" if action == "disable" else "enabled"},
            allow_private=settings.allow_private_webhook_targets,
            now=now,
        )
    return RedirectResponse(f"/dashboard/webhooks#endpoint-{endpoint.id}", status_code=303)
