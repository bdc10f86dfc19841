"""Due work of the events domain: dispatching the outbox to its consumers, and sending
webhook deliveries."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.events import service, webhooks
from stallholder.events.models import Event
from stallholder.kit.clock import Clock
from stallholder.kit.db import Database
from stallholder.kit.errors import DomainError
from stallholder.kit.signing import signature_header

log = logging.getLogger("stallholder.events")

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
        # One event whose consumer fails (a bug) must not hold up every other event: its
        # writes roll back to the savepoint and it stays in the outbox for the next pass.
        event_id, event_type = event.id, event.type
        try:
            async with session.begin_nested():
                for consume in consumers:
                    await consume(session, event, now)
                event.dispatched_at = now
        except Exception:
            log.exception(
                "event %s (%s) stays in the outbox: a consumer failed", event_id, event_type
            )
    await session.flush()
    return len(events)


# Outgoing webhooks ----------------------------------------------------------------------

USER_AGENT = "Stallholder-Webhooks/1"
WEBHOOK_BATCH = 20


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    allow_private: bool
    timeout_seconds: float
    lease: timedelta
    policy: webhooks.DisablePolicy


async def send_webhook(
    client: httpx.AsyncClient,
    outgoing: webhooks.Outgoing,
    *,
    allow_private: bool,
    timeout_seconds: float,
    timestamp: int,
) -> webhooks.Outcome:
    """One signed POST. The host is resolved and checked first, and the request goes to
    the checked address (with the original ``Host`` and TLS server name), so a DNS answer
    that changes between the check and the connection cannot reach a private address.
    Redirects are not followed: a 3xx is a failure."""
    started = time.monotonic()

    def elapsed() -> int:
        return round((time.monotonic() - started) * 1000)

    try:
        addresses = await webhooks.check_target(outgoing.url, allow_private=allow_private)
    except DomainError as error:
        return webhooks.Outcome(status_code=None, latency_ms=elapsed(), error=error.detail)
    url = httpx.URL(outgoing.url)
    address = str(addresses[0])
    pinned = url.copy_with(host=address)
    headers = {
        "host": url.netloc.decode("ascii"),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": outgoing.message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(
            outgoing.secrets,
            message_id=outgoing.message_id,
            timestamp=timestamp,
            body=outgoing.body,
        ),
    }
    try:
        response = await client.post(
            pinned,
            content=outgoing.body,
            headers=headers,
            timeout=timeout_seconds,
            follow_redirects=False,
            extensions={"sni_hostname": url.host},
        )
    except httpx.HTTPError as error:
        return webhooks.Outcome(
            status_code=None,
            latency_ms=elapsed(),
            error=f"{type(error).__name__}: {error}"[:500],
        )
    excerpt = response.text[: webhooks.EXCERPT_CHARACTERS] if response.content else None
    return webhooks.Outcome(
        status_code=response.status_code, latency_ms=elapsed(), response_excerpt=excerpt
    )


async def deliver_webhooks(
    database: Database,
    clock: Clock,
    *,
    settings: WebhookSettings,
    client: httpx.AsyncClient | None = None,
    batch: int = WEBHOOK_BATCH,
) -> int:
    """The runner: claim due deliveries, send them concurrently with no transaction open,
    record each outcome in its own unit of work. Returns how many were attempted.

    Without a ``client`` one is opened for the batch and closed after it."""
    async with database.unit_of_work() as session:
        claimed = await webhooks.claim_due(
            session, now=clock.now(), lease=settings.lease, limit=batch
        )
    if not claimed:
        return 0
    timestamp = int(clock.now().timestamp())

    async def send_all(http: httpx.AsyncClient) -> list[webhooks.Outcome]:
        return list(
            await asyncio.gather(
                *(
                    send_webhook(
                        http,
                        outgoing,
                        allow_private=settings.allow_private,
                        timeout_seconds=settings.timeout_seconds,
                        timestamp=timestamp,
                    )
                    for outgoing in claimed
                )
            )
        )

    if client is not None:
        outcomes = await send_all(client)
    else:
        async with httpx.AsyncClient() as http:
            outcomes = await send_all(http)
    for outgoing, outcome in zip(claimed, outcomes, strict=True):
        async with database.unit_of_work() as session:
            await webhooks.record_outcome(
                session,
                outgoing=outgoing,
                outcome=outcome,
                policy=settings.policy,
                now=clock.now(),
            )
    return len(claimed)
