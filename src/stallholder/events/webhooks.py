"""Outgoing webhooks: endpoints, their secrets, the deliveries and their log.

Each delivery is due work (``kit.work``, kind ``events.deliver_webhook``); its handler
(``events.tasks``) reads the deliveries here, sends them with no transaction open, and
records the outcomes here. See docs/webhooks.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast
from urllib.parse import urlsplit

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.events import service as events
from stallholder.events.models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from stallholder.events.schemas import endpoint_payload
from stallholder.events.types import EVENT_TYPES
from stallholder.kit.addresses import (
    IPAddress,
    is_allowed_port,
    is_public_address,
)
from stallholder.kit.errors import Conflict, InvalidRequest, NotFound
from stallholder.kit.ids import new_id
from stallholder.kit.outbound import resolve
from stallholder.kit.pagination import Page, paginate
from stallholder.kit.signing import new_webhook_secret
from stallholder.kit.work import NewWork, Retry, enqueue_many

# Delay before each retry: attempt 1 is immediate, then 5 s, 5 min, 30 min, 2 h, 5 h,
# 10 h, 10 h, 10 h, 12 h, 22 h: 11 attempts over 71.6 hours, about three days.
RETRY_DELAYS: tuple[timedelta, ...] = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
    timedelta(hours=10),
    timedelta(hours=12),
    timedelta(hours=22),
)
MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
DELIVER_KIND = "events.deliver_webhook"
DEFAULT_ROTATION_OVERLAP = timedelta(hours=24)
MAX_ROTATION_OVERLAP = timedelta(days=7)
EXCERPT_CHARACTERS = 1024


class WebhookEndpointNotFound(NotFound):
    slug = "webhook-endpoint-not-found"
    title = "No such webhook endpoint"


class InvalidWebhookUrl(InvalidRequest):
    slug = "invalid-webhook-url"
    title = "The webhook URL cannot be used"


class PrivateWebhookTarget(InvalidRequest):
    slug = "private-webhook-target"
    title = "The webhook URL points at a private network address"


class UnknownEventType(InvalidRequest):
    slug = "unknown-event-type"
    title = "Unknown event type in the filter"


class WebhookEndpointDisabled(Conflict):
    slug = "webhook-endpoint-disabled"
    title = "The webhook endpoint is disabled"


class WebhookEndpointDeleted(Conflict):
    slug = "webhook-endpoint-deleted"
    title = "The webhook endpoint is deleted"


def retry_delay(attempts_made: int) -> timedelta | None:
    """How long after the ``attempts_made``-th failed attempt the next one is due; None
    once every attempt is used."""
    if attempts_made >= MAX_ATTEMPTS:
        return None
    return RETRY_DELAYS[attempts_made - 1]


def check_event_filter(names: Sequence[str]) -> list[str]:
    """The filter, de-duplicated in order: event types, or ``["*"]`` for all.

    Raises:
        UnknownEventType: a name that is not an event type.
    """
    unique = list(dict.fromkeys(names))
    if unique == ["*"]:
        return unique
    unknown = [name for name in unique if name not in EVENT_TYPES]
    if unknown or "*" in unique or not unique:
        listed = ", ".join(sorted(EVENT_TYPES))
        raise UnknownEventType(
            f"unknown event type(s) {', '.join(repr(u) for u in unknown) or repr('*')}: "
            f'use ["*"] alone for every event, or some of: {listed}'
        )
    return unique


def _url_host(url: str) -> tuple[str, int]:
    """Raises InvalidWebhookUrl unless ``url`` is an absolute http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise InvalidWebhookUrl(f"{url!r} is not a URL: {error}") from error
    if parts.scheme not in ("http", "https"):
        raise InvalidWebhookUrl(f"the URL must start with https:// or http://, not {url!r}")
    if not parts.hostname:
        raise InvalidWebhookUrl(f"the URL {url!r} has no host")
    if parts.username or parts.password:
        raise InvalidWebhookUrl("put no credentials in the URL; verify the signature instead")
    if port is not None and not is_allowed_port(port):
        raise InvalidWebhookUrl(f"the URL {url!r} names port {port}; use a port from 1 to 65535")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def check_target(url: str, *, allow_private: bool) -> list[IPAddress]:
    """The addresses a delivery to ``url`` may connect to.

    Raises:
        InvalidWebhookUrl: not an http(s) URL, or its host does not resolve.
        PrivateWebhookTarget: it resolves to a private, loopback, link-local or otherwise
            non-public address and the platform does not allow those.
    """
    host, port = _url_host(url)
    try:
        addresses = await resolve(host, port)
    except OSError as error:
        raise InvalidWebhookUrl(f"the host {host!r} does not resolve: {error}") from error
    if not addresses:
        raise InvalidWebhookUrl(f"the host {host!r} has no address")
    if not allow_private:
        private = [str(a) for a in addresses if not is_public_address(a)]
        if private:
            raise PrivateWebhookTarget(
                f"{host} resolves to {', '.join(private)}, which is not a public address; "
                "webhooks go to public http(s) URLs (an operator can allow private ones "
                "with STALLHOLDER_ALLOW_PRIVATE_WEBHOOK_TARGETS=true)"
            )
    return addresses


# Endpoints ----------------------------------------------------------------------------


async def create_endpoint(
    session: AsyncSession,
    *,
    creator_id: str,
    url: str,
    event_types: Sequence[str],
    description: str | None,
    allow_private: bool,
    now: datetime,
) -> WebhookEndpoint:
    """Raises InvalidWebhookUrl, PrivateWebhookTarget or UnknownEventType."""
    types = check_event_filter(event_types)
    await check_target(url, allow_private=allow_private)
    endpoint = WebhookEndpoint(
        id=new_id("we"),
        creator_id=creator_id,
        url=url,
        description=description,
        events=types,
        status="enabled",
        secret=new_webhook_secret(),
        consecutive_failures=0,
        created_at=now,
        updated_at=now,
    )
    session.add(endpoint)
    await session.flush()
    return endpoint


async def get_endpoint(
    session: AsyncSession, *, creator_id: str, endpoint_id: str, lock: bool = False
) -> WebhookEndpoint:
    """Raises WebhookEndpointNotFound, for another creator's endpoint too."""
    statement = select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)
    if lock:
        statement = statement.with_for_update()
    endpoint = (await session.execute(statement)).scalar_one_or_none()
    if endpoint is None or endpoint.creator_id != creator_id:
        raise WebhookEndpointNotFound(f"no webhook endpoint {endpoint_id!r}")
    return endpoint


async def list_endpoints(
    session: AsyncSession, *, creator_id: str, limit: int, starting_after: str | None
) -> Page[WebhookEndpoint]:
    statement = select(WebhookEndpoint).where(WebhookEndpoint.creator_id == creator_id)
    return await paginate(
        session, statement, id_column=WebhookEndpoint.id, limit=limit, starting_after=starting_after
    )


async def update_endpoint(
    session: AsyncSession,
    *,
    creator_id: str,
    endpoint_id: str,
    changes: dict[str, Any],
    allow_private: bool,
    now: datetime,
) -> WebhookEndpoint:
    """``changes`` holds only the fields the caller sent: url, events, description, status.

    Re-enabling starts a new run of failures from zero; its pending retries resume.

    Raises:
        WebhookEndpointNotFound, WebhookEndpointDeleted (a deleted endpoint stays deleted:
        create a new one), and the URL and filter errors.
    """
    # Checked before the row is locked or changed: a refusal changes nothing, and the
    # URL's host is resolved with no lock held.
    events = check_event_filter(changes["events"]) if "events" in changes else None
    if "url" in changes:
        await check_target(changes["url"], allow_private=allow_private)
    endpoint = await get_endpoint(
        session, creator_id=creator_id, endpoint_id=endpoint_id, lock=True
    )
    if endpoint.status == "deleted":
        raise WebhookEndpointDeleted(
            f"webhook endpoint {endpoint_id} was deleted and cannot be changed or enabled; "
            "create a new endpoint with POST /v1/webhook_endpoints"
        )
    if events is not None:
        endpoint.events = events
    if "url" in changes:
        endpoint.url = changes["url"]
    if "description" in changes:
        endpoint.description = changes["description"]
    if changes.get("status") == "enabled" and endpoint.status != "enabled":
        endpoint.status = "enabled"
        endpoint.disabled_reason = None
        endpoint.consecutive_failures = 0
        endpoint.failing_since = None
        await _resume_pending(session, endpoint, now=now)
    elif changes.get("status") == "disabled" and endpoint.status != "disabled":
        endpoint.status = "disabled"
        endpoint.disabled_reason = "disabled by the creator"
    endpoint.updated_at = now
    await session.flush()
    return endpoint


async def delete_endpoint(session: AsyncSession, *, creator_id: str, endpoint_id: str) -> None:
    """The endpoint stops receiving at once; its delivery log stays (status ``deleted``)."""
    endpoint = await get_endpoint(
        session, creator_id=creator_id, endpoint_id=endpoint_id, lock=True
    )
    endpoint.status = "deleted"
    await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.status == "pending")
        .values(status="failed")
    )
    await session.flush()


async def rotate_secret(
    session: AsyncSession,
    *,
    creator_id: str,
    endpoint_id: str,
    overlap: timedelta,
    now: datetime,
) -> WebhookEndpoint:
    """A new secret; the old one keeps signing beside it for ``overlap`` (0 ends it now).

    Raises:
        WebhookEndpointDeleted: a deleted endpoint signs nothing, so has no secret to roll.
    """
    endpoint = await get_endpoint(
        session, creator_id=creator_id, endpoint_id=endpoint_id, lock=True
    )
    if endpoint.status == "deleted":
        raise WebhookEndpointDeleted(
            f"webhook endpoint {endpoint_id} ({endpoint.url}) is deleted: it signs nothing, "
            "so it has no secret to roll; create a new endpoint with POST /v1/webhook_endpoints"
        )
    endpoint.previous_secret = endpoint.secret if overlap > timedelta(0) else None
    endpoint.previous_secret_expires_at = now + overlap if overlap > timedelta(0) else None
    endpoint.secret = new_webhook_secret()
    endpoint.updated_at = now
    await session.flush()
    return endpoint


def secrets_in_use(endpoint: WebhookEndpoint, *, now: datetime) -> list[str]:
    """The secrets that sign a delivery now: the current one, then the previous one while
    its overlap lasts."""
    in_use = [endpoint.secret]
    if (
        endpoint.previous_secret is not None
        and endpoint.previous_secret_expires_at is not None
        and now < endpoint.previous_secret_expires_at
    ):
        in_use.append(endpoint.previous_secret)
    return in_use


def _matches(endpoint: WebhookEndpoint, event_type: str) -> bool:
    return endpoint.events == ["*"] or event_type in endpoint.events


# Deliveries ---------------------------------------------------------------------------


def _delivery(endpoint: WebhookEndpoint, event: Event, *, now: datetime) -> WebhookDelivery:
    return WebhookDelivery(
        id=new_id("whd"),
        creator_id=event.creator_id,
        endpoint_id=endpoint.id,
        event_id=event.id,
        status="pending",
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )


def _work(delivery: WebhookDelivery, *, due_at: datetime) -> NewWork:
    return NewWork(
        kind=DELIVER_KIND,
        payload={"delivery_id": delivery.id},
        due_at=due_at,
        dedupe_key=delivery.id,
        creator_id=delivery.creator_id,
    )


async def _add_deliveries(
    session: AsyncSession, deliveries: Sequence[WebhookDelivery], *, now: datetime
) -> None:
    """The delivery rows and, in the same transaction, the work that sends them."""
    session.add_all(deliveries)
    await session.flush()
    await enqueue_many(session, [_work(d, due_at=now) for d in deliveries], now=now)


async def _resume_pending(
    session: AsyncSession, endpoint: WebhookEndpoint, *, now: datetime
) -> None:
    """A re-enabled endpoint's waiting deliveries are due again (their work ended while
    the endpoint was disabled; a live one is not enqueued twice)."""
    pending = (
        await session.execute(
            select(WebhookDelivery).where(
                WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.status == "pending"
            )
        )
    ).scalars()
    work = []
    for delivery in pending:
        delivery.next_attempt_at = now
        work.append(_work(delivery, due_at=now))
    await enqueue_many(session, work, now=now)


async def queue_deliveries(session: AsyncSession, batch: Sequence[Event], now: datetime) -> None:
    """The outbox consumer: one delivery per enabled endpoint of the event's creator whose
    filter takes the event. Runs in the dispatch transaction, so each is queued exactly
    once; the endpoints of the whole batch are read in one query."""
    creators = {event.creator_id for event in batch}
    by_creator: dict[str, list[WebhookEndpoint]] = {creator: [] for creator in creators}
    endpoints = (
        await session.execute(
            select(WebhookEndpoint)
            .where(
                WebhookEndpoint.creator_id.in_(creators),
                WebhookEndpoint.status == "enabled",
            )
            .order_by(WebhookEndpoint.id)
        )
    ).scalars()
    for endpoint in endpoints:
        by_creator[endpoint.creator_id].append(endpoint)
    # Plain rows, not ORM objects: a dispatched batch can fan out into thousands.
    rows = [
        {
            "id": new_id("whd"),
            "creator_id": event.creator_id,
            "endpoint_id": endpoint.id,
            "event_id": event.id,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for event in batch
        for endpoint in by_creator[event.creator_id]
        if _matches(endpoint, event.type)
    ]
    if not rows:
        return
    await session.execute(insert(cast(Table, WebhookDelivery.__table__)), rows)
    work = [
        NewWork(
            kind=DELIVER_KIND,
            payload={"delivery_id": row["id"]},
            due_at=now,
            dedupe_key=str(row["id"]),
            creator_id=str(row["creator_id"]),
        )
        for row in rows
    ]
    await enqueue_many(session, work, now=now)


async def redeliver(
    session: AsyncSession,
    *,
    creator_id: str,
    event_id: str,
    endpoint_id: str | None,
    now: datetime,
) -> list[WebhookDelivery]:
    """Send an event again, with the same ``webhook-id``: to one endpoint, or to every
    enabled endpoint whose filter takes it.

    Raises:
        EventNotFound, WebhookEndpointNotFound: not this creator's.
        WebhookEndpointDisabled: the named endpoint is disabled; enable it first.
    """
    event = await events.get_event(session, creator_id=creator_id, event_id=event_id)
    if endpoint_id is not None:
        endpoint = await get_endpoint(session, creator_id=creator_id, endpoint_id=endpoint_id)
        if endpoint.status != "enabled":
            raise WebhookEndpointDisabled(
                f"{endpoint.id} is {endpoint.status}; enable it with PATCH "
                f'/v1/webhook_endpoints/{endpoint.id} {{"status": "enabled"}} first'
            )
        targets = [endpoint]
    else:
        targets = [
            e
            for e in (
                await session.execute(
                    select(WebhookEndpoint).where(
                        WebhookEndpoint.creator_id == creator_id,
                        WebhookEndpoint.status == "enabled",
                    )
                )
            ).scalars()
            if _matches(e, event.type)
        ]
    deliveries = [_delivery(endpoint, event, now=now) for endpoint in targets]
    await _add_deliveries(session, deliveries, now=now)
    return deliveries


async def list_deliveries(
    session: AsyncSession,
    *,
    creator_id: str,
    endpoint_id: str,
    event_id: str | None,
    limit: int,
    starting_after: str | None,
) -> Page[WebhookDelivery]:
    await get_endpoint(session, creator_id=creator_id, endpoint_id=endpoint_id)
    statement = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    if event_id is not None:
        statement = statement.where(WebhookDelivery.event_id == event_id)
    return await paginate(
        session, statement, id_column=WebhookDelivery.id, limit=limit, starting_after=starting_after
    )


async def latest_deliveries(
    session: AsyncSession, *, creator_id: str, endpoint_ids: Sequence[str], per_endpoint: int
) -> dict[str, list[WebhookDelivery]]:
    """The ``per_endpoint`` newest deliveries of each endpoint (newest first, as
    ``list_deliveries`` pages them), for all of them in one statement: a window numbers
    each endpoint's deliveries, and the first ``per_endpoint`` of each are kept."""
    found: dict[str, list[WebhookDelivery]] = {endpoint_id: [] for endpoint_id in endpoint_ids}
    if not endpoint_ids:
        return found
    numbered = (
        select(
            WebhookDelivery.id,
            func.row_number()
            .over(
                partition_by=WebhookDelivery.endpoint_id,
                order_by=WebhookDelivery.id.desc(),
            )
            .label("position"),
        )
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(
            WebhookDelivery.endpoint_id.in_(endpoint_ids),
            WebhookEndpoint.creator_id == creator_id,
        )
        .subquery()
    )
    rows = await session.execute(
        select(WebhookDelivery)
        .join(numbered, numbered.c.id == WebhookDelivery.id)
        .where(numbered.c.position <= per_endpoint)
        .order_by(WebhookDelivery.id.desc())
    )
    for delivery in rows.scalars():
        found[delivery.endpoint_id].append(delivery)
    return found


async def attempts_of(
    session: AsyncSession, delivery_ids: Sequence[str]
) -> dict[str, list[WebhookAttempt]]:
    found: dict[str, list[WebhookAttempt]] = {d: [] for d in delivery_ids}
    if delivery_ids:
        rows = await session.execute(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(delivery_ids))
            .order_by(WebhookAttempt.id)
        )
        for attempt in rows.scalars():
            found[attempt.delivery_id].append(attempt)
    return found


@dataclass(frozen=True, slots=True)
class Outgoing:
    """What the runner needs to send one delivery, read while the claim is held."""

    delivery_id: str
    endpoint_id: str
    url: str
    secrets: tuple[str, ...]
    message_id: str
    body: bytes
    attempt: int


async def load_outgoing(
    session: AsyncSession, *, delivery_ids: Sequence[str], now: datetime
) -> list[Outgoing]:
    """What to send for the pending deliveries among ``delivery_ids`` whose endpoint is
    enabled, in three queries. The others are settled already (or wait for their endpoint
    to be re-enabled, which enqueues them again): there is nothing to send for them."""
    deliveries = list(
        await session.execute(
            select(
                WebhookDelivery.id,
                WebhookDelivery.endpoint_id,
                WebhookDelivery.event_id,
                WebhookDelivery.attempts,
            ).where(WebhookDelivery.id.in_(delivery_ids), WebhookDelivery.status == "pending")
        )
    )
    endpoints = await _endpoints_by_id(session, {d.endpoint_id for d in deliveries})
    events_by_id = await _events_by_id(session, {d.event_id for d in deliveries})
    outgoing: list[Outgoing] = []
    for delivery in sorted(deliveries, key=lambda d: d.id):
        endpoint, event = endpoints[delivery.endpoint_id], events_by_id[delivery.event_id]
        if endpoint.status != "enabled":
            continue
        outgoing.append(
            Outgoing(
                delivery_id=delivery.id,
                endpoint_id=endpoint.id,
                url=endpoint.url,
                secrets=tuple(secrets_in_use(endpoint, now=now)),
                message_id=event.id,
                body=_encode(events.envelope(event)),
                attempt=delivery.attempts + 1,
            )
        )
    return outgoing


async def _endpoints_by_id(session: AsyncSession, ids: set[str]) -> dict[str, WebhookEndpoint]:
    rows = await session.execute(select(WebhookEndpoint).where(WebhookEndpoint.id.in_(ids)))
    return {row.id: row for row in rows.scalars()}


async def _events_by_id(session: AsyncSession, ids: set[str]) -> dict[str, events.EventFields]:
    """The events' columns (not ORM objects: a batch has hundreds, read once)."""
    rows = await session.execute(
        select(Event.id, Event.type, Event.api_version, Event.created_at, Event.data).where(
            Event.id.in_(ids)
        )
    )
    return {row.id: row for row in rows}


def _encode(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one HTTP attempt got: a status code, or an error before any response."""

    status_code: int | None
    latency_ms: int
    response_excerpt: str | None = None
    error: str | None = None

    @property
    def is_success(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    def describe(self) -> str:
        return self.error or f"the endpoint answered {self.status_code}"


@dataclass(frozen=True, slots=True)
class DisablePolicy:
    after_failures: int
    after: timedelta


@dataclass(slots=True)
class _DeliveryState:
    """A delivery's row as recording changes it (Core, not the ORM: a batch has hundreds)."""

    id: str
    status: str
    attempts: int
    last_status_code: int | None = None
    completed_at: datetime | None = None
    next_attempt_at: datetime | None = None


async def record_outcomes(
    session: AsyncSession,
    *,
    sent: Sequence[tuple[Outgoing, Outcome]],
    policy: DisablePolicy,
    now: datetime,
    retry_at: Callable[[timedelta], datetime],
) -> dict[str, BaseException | None]:
    """Log each attempt, then settle its delivery and its endpoint's run of failures.
    Returns, per delivery id, what the work engine should do: None when the delivery is
    settled (succeeded, or failed for good), a ``Retry`` at the next time in the schedule
    (``retry_at`` turns the delay into a jittered time).

    A 410 disables the endpoint at once. Otherwise the endpoint is disabled once its run
    of failures is long enough in both attempts and time, and ``webhook_endpoint.disabled``
    is emitted (the creator is emailed from it; a disabled endpoint receives nothing, that
    event included).
    """
    if not sent:
        return {}
    # Endpoints first, then deliveries, each in key order: the order delete_endpoint
    # takes them in too, so the two never deadlock.
    endpoint_ids = sorted({outgoing.endpoint_id for outgoing, _ in sent})
    endpoints = {
        e.id: e
        for e in (
            await session.execute(
                select(WebhookEndpoint)
                .where(WebhookEndpoint.id.in_(endpoint_ids))
                .order_by(WebhookEndpoint.id)
                .with_for_update()
            )
        ).scalars()
    }
    table = cast(Table, WebhookDelivery.__table__)
    locked = await session.execute(
        select(table.c.id, table.c.creator_id, table.c.status, table.c.attempts)
        .where(table.c.id.in_([outgoing.delivery_id for outgoing, _ in sent]))
        .order_by(table.c.id)
        .with_for_update()
    )
    rows = list(locked)
    deliveries = {row.id: _DeliveryState(row.id, row.status, row.attempts) for row in rows}
    creators = {row.id: row.creator_id for row in rows}
    results: dict[str, BaseException | None] = {}
    attempts: list[dict[str, object]] = []
    changed: list[_DeliveryState] = []
    for outgoing, outcome in sent:
        delivery = deliveries[outgoing.delivery_id]
        attempts.append(
            {
                "creator_id": creators[delivery.id],
                "delivery_id": delivery.id,
                "number": outgoing.attempt,
                "attempted_at": now,
                "status_code": outcome.status_code,
                "error": outcome.error,
                "latency_ms": outcome.latency_ms,
                "response_excerpt": outcome.response_excerpt,
            }
        )
        delivery.last_status_code = outcome.status_code
        changed.append(delivery)
        results[delivery.id] = await _settle(
            session,
            endpoints[outgoing.endpoint_id],
            delivery,
            outgoing,
            outcome,
            policy=policy,
            now=now,
            retry_at=retry_at,
        )
    await session.execute(insert(cast(Table, WebhookAttempt.__table__)), attempts)
    # One UPDATE per distinct outcome (usually one: every delivery succeeded at once).
    groups: dict[tuple[object, ...], list[str]] = {}
    for d in changed:
        key = (d.status, d.attempts, d.last_status_code, d.completed_at, d.next_attempt_at)
        groups.setdefault(key, []).append(d.id)
    for (status, attempts_made, code, completed_at, next_at), ids in groups.items():
        values: dict[str, object] = {
            "status": status,
            "attempts": attempts_made,
            "last_status_code": code,
            "completed_at": completed_at,
        }
        if next_at is not None:
            values["next_attempt_at"] = next_at
        await session.execute(update(table).where(table.c.id.in_(ids)).values(**values))
    await session.flush()
    return results


async def _settle(
    session: AsyncSession,
    endpoint: WebhookEndpoint,
    delivery: _DeliveryState,
    outgoing: Outgoing,
    outcome: Outcome,
    *,
    policy: DisablePolicy,
    now: datetime,
    retry_at: Callable[[timedelta], datetime],
) -> BaseException | None:
    if delivery.status != "pending":  # settled meanwhile (endpoint deleted): only log
        return None
    delivery.attempts = outgoing.attempt
    if outcome.is_success:
        delivery.status = "succeeded"
        delivery.completed_at = now
        endpoint.consecutive_failures = 0
        endpoint.failing_since = None
        return None

    endpoint.consecutive_failures += 1
    endpoint.failing_since = endpoint.failing_since or now
    delay = retry_delay(delivery.attempts)
    result: BaseException | None = None
    if outcome.status_code == 410 or delay is None:
        delivery.status = "failed"
        delivery.completed_at = now
    else:
        delivery.next_attempt_at = retry_at(delay)
        result = Retry(outcome.describe(), at=delivery.next_attempt_at)
    if endpoint.status == "enabled":
        if outcome.status_code == 410:
            await _disable(session, endpoint, reason="the endpoint answered 410 Gone", now=now)
        elif (
            endpoint.consecutive_failures >= policy.after_failures
            and now - endpoint.failing_since >= policy.after
        ):
            await _disable(
                session,
                endpoint,
                reason=f"{endpoint.consecutive_failures} deliveries in a row failed since "
                f"{endpoint.failing_since.isoformat()}",
                now=now,
            )
    return result


async def _disable(
    session: AsyncSession, endpoint: WebhookEndpoint, *, reason: str, now: datetime
) -> None:
    endpoint.status = "disabled"
    endpoint.disabled_reason = reason
    endpoint.updated_at = now
    await session.flush()
    await events.emit(
        session,
        creator_id=endpoint.creator_id,
        type="webhook_endpoint.disabled",
        data=endpoint_payload(endpoint),
        now=now,
    )
