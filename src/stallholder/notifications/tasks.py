"""Due work of the notifications domain: queueing emails when events are dispatched, and
sending due emails.

Delivery is at least once. An email is sent with no transaction open and recorded as
sent afterwards; if the worker dies between the two, the lease runs out and the email is
sent again, with the same Message-ID and Date, so mail clients that deduplicate show it
once. Nothing can make SMTP exactly once: the server may have accepted a message whose
"250 OK" never reached us.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.events.models import Event
from stallholder.kit.clock import Clock
from stallholder.kit.db import Database
from stallholder.notifications import service
from stallholder.notifications.transport import (
    Transport,
    build_message,
    is_permanent_failure,
    message_id_for,
    sender_address,
)
from stallholder.orders.schemas import OrderOut, RefundOut

log = logging.getLogger("stallholder.notifications")

BATCH_SIZE = 10


async def queue_emails_for_event(session: AsyncSession, event: Event, now: datetime) -> None:
    """The outbox consumer: queue the emails an event calls for. Only writes rows.

    Runs in the dispatch transaction, so the emails are queued exactly once per event.
    """
    data = event.data
    if event.type == "order.paid":
        await service.queue_receipt(
            session,
            event_id=event.id,
            creator_id=event.creator_id,
            order=OrderOut.model_validate(data),
            now=now,
        )
    elif event.type == "refund.created":
        await service.queue_refund_notice(
            session,
            event_id=event.id,
            creator_id=event.creator_id,
            refund=RefundOut.model_validate(data),
            now=now,
        )
    elif event.type == "payment.failed":
        await service.queue_payment_failed(
            session, event_id=event.id, creator_id=event.creator_id, attempt=data, now=now
        )
    elif event.type == "webhook_endpoint.disabled":
        await service.queue_webhook_endpoint_disabled(
            session, event_id=event.id, creator_id=event.creator_id, endpoint=data, now=now
        )


async def send_due_emails(
    database: Database,
    clock: Clock,
    *,
    transport: Transport,
    sender: str,
    batch_size: int = BATCH_SIZE,
) -> int:
    """Claim due emails in one short transaction, send each with no transaction open, and
    record each outcome in its own. Returns how many were attempted.

    A failed send is retried with backoff (``service.retry_delay``); a recipient the server
    refuses for good fails at once.
    """
    async with database.unit_of_work() as session:
        claimed = await service.claim_due(session, now=clock.now(), limit=batch_size)
    for email in claimed:
        try:
            await transport.send(build_message(email, sender=sender))
        except Exception as error:
            log.warning("sending email %s to %s failed: %r", email.id, email.to, error)
            async with database.unit_of_work() as session:
                await service.record_failure(
                    session,
                    email_id=email.id,
                    error=repr(error),
                    is_permanent=is_permanent_failure(error),
                    now=clock.now(),
                )
            continue
        async with database.unit_of_work() as session:
            await service.record_sent(
                session,
                email_id=email.id,
                message_id=message_id_for(email.id, sender),
                now=clock.now(),
            )
    return len(claimed)


def email_runner(
    *, transport: Transport, sender: str
) -> Callable[[Database, Clock], Awaitable[int]]:
    """``send_due_emails`` bound to a transport and sender, as the worker runs it.

    Raises:
        ValueError: ``sender`` is not an email address (checked now, not at the first send).
    """
    sender_address(sender)

    async def run(database: Database, clock: Clock) -> int:
        return await send_due_emails(database, clock, transport=transport, sender=sender)

    return run
