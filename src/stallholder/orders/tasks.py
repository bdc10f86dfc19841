"""Due work of the orders domain: handling Stripe's events from the inbox.

A runner (it calls Stripe): it claims due inbox rows in one short transaction, re-reads
each event's object from Stripe with no transaction open, and applies what it read in a
transaction of its own that also marks the row processed, so an event is handled once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.events import inbox
from stallholder.kit.clock import Clock
from stallholder.kit.db import Database
from stallholder.orders import disputes, service
from stallholder.payments.gateway import DisputeSnapshot, Gateway
from stallholder.payments.stripe_gateway import INBOX_SOURCE, StripeGateway

log = logging.getLogger("stallholder.orders.tasks")
# How long a pending refund waits after the gateway could not answer.
REFUND_RETRY_AFTER = timedelta(minutes=1)

# Every event about a dispute is handled the same way: read the dispute as it is now.
DISPUTE_EVENT_PREFIX = "charge.dispute."

# Handlers other domains register for event types (checkout completes sessions on
# ``payment_intent.succeeded``). Each gets the event's object id and runs in the
# transaction that marks the event processed; it returns a note for the inbox row.
EventHandler = Callable[[AsyncSession, str, datetime], Awaitable[str | None]]


def _object_id(payload: dict[str, Any]) -> str:
    data = payload.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    object_id = obj.get("id") if isinstance(obj, dict) else None
    if not isinstance(object_id, str) or not object_id:
        raise ValueError("the event has no data.object.id")
    return object_id


async def _apply(
    database: Database,
    clock: Clock,
    *,
    event_id: int,
    snapshot: DisputeSnapshot | None,
    fetched_at: datetime,
    note: str | None,
    handler: EventHandler | None = None,
    object_id: str | None = None,
) -> None:
    async with database.unit_of_work() as session:
        event = await inbox.lock(session, event_id=event_id)
        if event is None or event.processed_at is not None:
            return  # another worker handled it after its lease ran out
        now = clock.now()
        if snapshot is not None:
            dispute = await disputes.sync_dispute(
                session,
                gateway=StripeGateway.name,
                snapshot=snapshot,
                fetched_at=fetched_at,
                now=now,
            )
            if dispute is None:
                note = (
                    f"ignored: no order was paid with payment {snapshot.payment_reference!r} "
                    f"that dispute {snapshot.external_id} names"
                )
        if handler is not None and object_id is not None:
            note = await handler(session, object_id, now)
        inbox.mark_processed(event, now=now, note=note)


async def _fail(database: Database, clock: Clock, *, event_id: int, error: Exception) -> None:
    async with database.unit_of_work() as session:
        event = await inbox.lock(session, event_id=event_id)
        if event is not None and event.processed_at is None:
            inbox.mark_failed(event, error=f"{type(error).__name__}: {error}", now=clock.now())


async def process_stripe_events(
    database: Database,
    clock: Clock,
    *,
    gateway: StripeGateway,
    handlers: Mapping[str, EventHandler] | None = None,
    batch: int = 20,
) -> int:
    """Handle due Stripe events; returns how many were claimed.

    Dispute events re-read the dispute from Stripe. Event types in ``handlers`` go to
    their handler (which re-reads what it needs). Other event types are marked processed
    with a note: Stallholder does not act on them (yet).
    """
    handlers = handlers or {}
    async with database.unit_of_work() as session:
        claimed = [
            (event.id, event.type, event.payload)
            for event in await inbox.claim_due(
                session, source=INBOX_SOURCE, now=clock.now(), limit=batch
            )
        ]
    for event_id, event_type, payload in claimed:
        try:
            fetched_at = clock.now()
            snapshot, note, object_id = None, None, None
            handler = handlers.get(event_type)
            if event_type.startswith(DISPUTE_EVENT_PREFIX):
                snapshot = await gateway.retrieve_dispute(_object_id(payload))
            elif handler is not None:
                object_id = _object_id(payload)
            else:
                note = f"ignored: Stallholder does not act on {event_type}"
            await _apply(
                database,
                clock,
                event_id=event_id,
                snapshot=snapshot,
                fetched_at=fetched_at,
                note=note,
                handler=handler,
                object_id=object_id,
            )
        except Exception as error:
            log.exception("Stripe event %s (%s) failed", event_id, event_type)
            await _fail(database, clock, event_id=event_id, error=error)
    return len(claimed)


async def resolve_stale_refunds(
    database: Database, clock: Clock, *, gateway: Gateway, batch: int = 20
) -> int:
    """Finish refunds a crash left ``pending``: ask the gateway again with the same
    idempotency key (it answers with the refund it already made, or makes the one it
    never got), then record the outcome. Returns how many were due; one the gateway
    cannot answer for now stays pending and comes due again a minute later."""
    async with database.unit_of_work() as session:
        calls = await service.refund_calls_due(session, now=clock.now(), limit=batch)
    for call in calls:
        try:
            result = await service.call_refund(gateway, call)
        except Exception:
            log.exception("refund %s: the gateway could not answer", call.refund_id)
            async with database.unit_of_work() as session:
                await service.postpone_refund(
                    session, refund_id=call.refund_id, until=clock.now() + REFUND_RETRY_AFTER
                )
            continue
        async with database.unit_of_work() as session:
            await service.finish_refund(session, call=call, result=result, now=clock.now())
    return len(calls)
