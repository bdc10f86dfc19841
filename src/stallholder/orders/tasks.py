"""Due work of the orders domain: handling Stripe's events from the inbox.

The handler of ``inbox.stripe`` (it calls Stripe): it reads the inbox row in one short
transaction, re-reads the event's object from Stripe with no transaction open, and
applies what it read in a transaction of its own that also marks the row processed, so
an event is applied once. A crash in between only repeats the read.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.events import inbox
from stallholder.kit.clock import Clock
from stallholder.kit.db import Database
from stallholder.kit.work import Claimed, Context, Kind
from stallholder.orders import disputes, service
from stallholder.payments.gateway import DisputeSnapshot, Gateway
from stallholder.payments.stripe_gateway import INBOX_SOURCE

log = logging.getLogger("stallholder.orders.tasks")
# How long a pending refund waits after the gateway could not answer.
REFUND_RETRY_AFTER = timedelta(minutes=1)

# Every event about a dispute is handled the same way: read the dispute as it is now.
DISPUTE_EVENT_PREFIX = "charge.dispute."

# Handlers other domains register for event types (checkout completes sessions on
# ``payment_intent.succeeded``). Each gets the event's object id and runs in the
# transaction that marks the event processed; it returns a note for the inbox row.
EventHandler = Callable[[AsyncSession, str, datetime], Awaitable[str | None]]


class InboxResources(Protocol):
    """What handling a provider's events needs from the worker: its payment gateway."""

    @property
    def gateway(self) -> Gateway: ...


def _object_id(payload: dict[str, Any]) -> str:
    data = payload.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    object_id = obj.get("id") if isinstance(obj, dict) else None
    if not isinstance(object_id, str) or not object_id:
        raise ValueError("the event has no data.object.id")
    return object_id


async def _apply(
    context: Context[InboxResources],
    *,
    event_id: int,
    snapshot: DisputeSnapshot | None,
    fetched_at: datetime,
    note: str | None,
    handler: EventHandler | None = None,
    object_id: str | None = None,
) -> None:
    async with context.database.unit_of_work() as session:
        event = await inbox.lock(session, event_id=event_id)
        if event is None or event.processed_at is not None:
            return  # another worker handled it after its lease ran out
        now = context.clock.now()
        if snapshot is not None:
            synced = await disputes.sync_dispute(
                session,
                gateway=context.resources.gateway.name,
                snapshot=snapshot,
                fetched_at=fetched_at,
                now=now,
            )
            if not synced:
                note = (
                    f"ignored: no order was paid with payment {snapshot.payment_reference!r} "
                    f"that dispute {snapshot.external_id} names"
                )
        if handler is not None and object_id is not None:
            note = await handler(session, object_id, now)
        inbox.mark_processed(event, now=now, note=note)


async def handle_stripe_event(
    context: Context[InboxResources],
    item: Claimed,
    *,
    handlers: Mapping[str, EventHandler],
) -> None:
    """Handle one Stripe event from the inbox.

    Dispute events re-read the dispute from Stripe. Event types in ``handlers`` go to
    their handler (which re-reads what it needs). Other event types are marked processed
    with a note: Stallholder does not act on them (yet). A failure is kept on the row and
    raised, for the engine to retry.
    """
    event_id = int(item.payload["inbox_event_id"])
    async with context.database.unit_of_work() as session:
        event = await inbox.get(session, event_id=event_id)
        if event is None or event.processed_at is not None:
            return
        event_type, payload = event.type, event.payload
    try:
        fetched_at = context.clock.now()
        snapshot, note, object_id = None, None, None
        handler = handlers.get(event_type)
        if event_type.startswith(DISPUTE_EVENT_PREFIX):
            snapshot = await context.resources.gateway.retrieve_dispute(_object_id(payload))
        elif handler is not None:
            object_id = _object_id(payload)
        else:
            note = f"ignored: Stallholder does not act on {event_type}"
        await _apply(
            context,
            event_id=event_id,
            snapshot=snapshot,
            fetched_at=fetched_at,
            note=note,
            handler=handler,
            object_id=object_id,
        )
    except Exception as error:
        log.exception("Stripe event %s (%s) failed", event_id, event_type)
        async with context.database.unit_of_work() as session:
            row = await inbox.lock(session, event_id=event_id)
            if row is not None and row.processed_at is None:
                inbox.note_failure(row, error=f"{type(error).__name__}: {error}")
        raise


def stripe_inbox_kind(handlers: Mapping[str, EventHandler]) -> Kind[InboxResources]:
    """The ``inbox.stripe`` kind, with other domains' ``handlers`` by event type."""

    async def handle(context: Context[InboxResources], item: Claimed) -> None:
        await handle_stripe_event(context, item, handlers=handlers)

    return Kind(
        name=inbox.kind_for(INBOX_SOURCE),
        handler=handle,
        retry=inbox.RETRY,
        max_attempts=inbox.MAX_ATTEMPTS,
    )


# The inbox kinds by source: a worker registers the one for its payment gateway's name.
INBOX_KINDS: dict[str, Callable[[Mapping[str, EventHandler]], Kind[InboxResources]]] = {
    INBOX_SOURCE: stripe_inbox_kind,
}


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
