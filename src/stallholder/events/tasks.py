"""Due work of the events domain: dispatching the outbox to its consumers, and the
``events.deliver_webhook`` kind that sends webhook deliveries."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.events import service, webhooks
from stallholder.events.models import Event
from stallholder.kit.addresses import IPAddress
from stallholder.kit.errors import DomainError
from stallholder.kit.signing import signature_header
from stallholder.kit.work import Claimed, Context, Kind, Schedule
from stallholder.settings import Settings

log = logging.getLogger("stallholder.events")

# A consumer gets a batch of events in the dispatching transaction and only writes rows.
Consumer = Callable[[AsyncSession, Sequence[Event], datetime], Awaitable[None]]
DISPATCH_BATCH = 256


async def dispatch_events(
    session: AsyncSession,
    now: datetime,
    *,
    consumers: Sequence[Consumer],
    batch: int = DISPATCH_BATCH,
) -> int:
    """Hand the undispatched events to every consumer, then mark them dispatched.

    All in one transaction: the consumers' writes (webhook deliveries, emails) commit
    together with ``dispatched_at``, so an event is fanned out exactly once. Consumers
    must only write rows; the effects themselves run later from those rows. The batch
    goes to the consumers at once; if a consumer fails on it, each event is tried again
    on its own. Returns how many were dispatched (an event left behind does not count, so
    an outbox holding only events that fail lets the worker sleep).
    """
    events = await service.claim_undispatched(session, limit=batch)
    if not events:
        return 0
    try:
        async with session.begin_nested():
            for consume in consumers:
                await consume(session, events, now)
            await service.mark_dispatched(session, event_ids=[e.id for e in events], now=now)
        dispatched = len(events)
    except Exception:
        log.warning("a consumer failed on a batch of %d events; one by one now", len(events))
        dispatched = 0
        for event in events:
            await session.refresh(event)
            dispatched += await _dispatch_one(session, event, now, consumers=consumers)
    await session.flush()
    return dispatched


async def _dispatch_one(
    session: AsyncSession, event: Event, now: datetime, *, consumers: Sequence[Consumer]
) -> int:
    # One event whose consumer fails (a bug) must not hold up every other event: its
    # writes roll back to the savepoint and it stays in the outbox for the next pass.
    event_id, event_type = event.id, event.type
    try:
        async with session.begin_nested():
            for consume in consumers:
                await consume(session, [event], now)
            event.dispatched_at = now
    except Exception:
        log.exception("event %s (%s) stays in the outbox: a consumer failed", event_id, event_type)
        return 0
    return 1


# Outgoing webhooks ----------------------------------------------------------------------

USER_AGENT = "Stallholder-Webhooks/1"
# Deliveries claimed at once; they are sent ``webhook_concurrency`` at a time.
WEBHOOK_BATCH = 256


class WebhookResources(Protocol):
    """What delivering webhooks needs from the worker."""

    @property
    def settings(self) -> Settings: ...

    @property
    def http(self) -> httpx.AsyncClient: ...


Checked = Callable[[str], Awaitable[list[IPAddress]]]


def checked_once(*, allow_private: bool) -> Checked:
    """``webhooks.check_target`` with each URL resolved and checked once (per batch: the
    endpoints of a batch share their DNS answers)."""
    found: dict[str, asyncio.Task[list[IPAddress]]] = {}

    async def check(url: str) -> list[IPAddress]:
        if url not in found:
            found[url] = asyncio.ensure_future(
                webhooks.check_target(url, allow_private=allow_private)
            )
        return await asyncio.shield(found[url])

    return check


async def send_webhook(
    client: httpx.AsyncClient,
    outgoing: webhooks.Outgoing,
    *,
    allow_private: bool,
    timeout_seconds: float,
    timestamp: int,
    check: Checked | None = None,
) -> webhooks.Outcome:
    """One signed POST. The host is resolved and checked first (by ``check``, or on its
    own), and the request goes to the checked address (with the original ``Host`` and TLS
    server name), so a DNS answer that changes between the check and the connection
    cannot reach a private address. Redirects are not followed: a 3xx is a failure."""
    started = time.monotonic()

    def elapsed() -> int:
        return round((time.monotonic() - started) * 1000)

    try:
        if check is None:
            addresses = await webhooks.check_target(outgoing.url, allow_private=allow_private)
        else:
            addresses = await check(outgoing.url)
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
        # A request built here and sent as is: the client's merging of defaults (cookies,
        # base URL, default headers) costs more than the send itself at this rate.
        request = httpx.Request(
            "POST",
            pinned,
            content=outgoing.body,
            headers=headers,
            extensions={
                "sni_hostname": url.host,
                "timeout": httpx.Timeout(timeout_seconds).as_dict(),
            },
        )
        response = await client.send(request, follow_redirects=False)
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
    context: Context[WebhookResources], items: Sequence[Claimed]
) -> dict[str, BaseException | None]:
    """The handler of ``events.deliver_webhook``, for a claimed batch: read the
    deliveries in one short transaction, send them ``webhook_concurrency`` at a time over
    the worker's pooled HTTP client with no transaction open, and record every outcome in
    one more. A delivery that is settled already, or whose endpoint is disabled, needs
    nothing (re-enabling the endpoint enqueues it again)."""
    settings = context.resources.settings
    work_by_delivery = {str(item.payload["delivery_id"]): item.id for item in items}
    async with context.database.unit_of_work() as session:
        outgoing = await webhooks.load_outgoing(
            session, delivery_ids=list(work_by_delivery), now=context.clock.now()
        )
    timestamp = int(context.clock.now().timestamp())
    gate = asyncio.Semaphore(settings.webhook_concurrency)
    check = checked_once(allow_private=settings.allow_private_webhook_targets)

    async def send(one: webhooks.Outgoing) -> webhooks.Outcome:
        async with gate:
            return await send_webhook(
                context.resources.http,
                one,
                allow_private=settings.allow_private_webhook_targets,
                timeout_seconds=settings.webhook_timeout_seconds,
                timestamp=timestamp,
                check=check,
            )

    outcomes = await asyncio.gather(*(send(one) for one in outgoing))
    async with context.database.unit_of_work() as session:
        results = await webhooks.record_outcomes(
            session,
            sent=list(zip(outgoing, outcomes, strict=True)),
            policy=webhooks.DisablePolicy(
                after_failures=settings.webhook_disable_after_failures,
                after=timedelta(seconds=settings.webhook_disable_after_seconds),
            ),
            now=context.clock.now(),
            retry_at=context.retry_at,
        )
    return {work_by_delivery[delivery]: result for delivery, result in results.items()}


def webhook_kind(settings: Settings) -> Kind[WebhookResources]:
    """Delivering webhooks: the schedule of ``webhooks.RETRY_DELAYS`` (the handler
    settles the deliveries; the engine only retries what the handler says), with the
    lease from ``STALLHOLDER_WEBHOOK_LEASE_SECONDS``."""
    return Kind(
        name=webhooks.DELIVER_KIND,
        batch_handler=deliver_webhooks,
        retry=Schedule(webhooks.RETRY_DELAYS),
        max_attempts=webhooks.MAX_ATTEMPTS,
        lease=timedelta(seconds=settings.webhook_lease_seconds),
        batch_size=WEBHOOK_BATCH,
        parallel_batches=2,
    )
