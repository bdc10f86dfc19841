"""Due work of the notifications domain: queueing emails when events are dispatched, and
sending due emails.

Delivery is at least once. An email is sent with no transaction open and recorded as
sent afterwards; if the worker dies between the two, the work's lease runs out and the
email is sent again, with the same Message-ID and Date, so mail clients that deduplicate show it
once. Nothing can make SMTP exactly once: the server may have accepted a message whose
"250 OK" never reached us.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.events.models import Event
from stallholder.kit.work import Claimed, Context, GiveUp, Kind, Schedule
from stallholder.notifications import service
from stallholder.notifications.transport import (
    Transport,
    build_message,
    is_permanent_failure,
    message_id_for,
    sender_address,
)
from stallholder.orders.schemas import OrderOut, RefundOut
from stallholder.settings import Settings

log = logging.getLogger("stallholder.notifications")


async def queue_emails(session: AsyncSession, batch: Sequence[Event], now: datetime) -> None:
    """The outbox consumer: queue the emails the events call for. Only writes rows.

    Runs in the dispatch transaction, so the emails are queued exactly once per event.
    """
    for event in batch:
        await _queue_emails_for_event(session, event, now)


async def _queue_emails_for_event(session: AsyncSession, event: Event, now: datetime) -> None:
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
    elif event.type == "drop.raffle_offer":
        await service.queue_raffle_offer(
            session, event_id=event.id, creator_id=event.creator_id, offer=data, now=now
        )
    elif event.type == "webhook_endpoint.disabled":
        await service.queue_webhook_endpoint_disabled(
            session, event_id=event.id, creator_id=event.creator_id, endpoint=data, now=now
        )


class MailResources(Protocol):
    """What sending email needs from the worker."""

    @property
    def settings(self) -> Settings: ...

    @property
    def mail(self) -> Transport: ...


async def send_email(context: Context[MailResources], item: Claimed) -> None:
    """The handler of ``notifications.send_email``: read the email in one short
    transaction, send it with no transaction open, record the outcome in another.

    A failed send is retried on ``service.RETRY_DELAYS``; a recipient the server refuses
    for good, or a failure on the last attempt, marks the email failed and the work dead
    (``stallholder jobs retry`` sends it again).
    """
    email_id = str(item.payload["email_id"])
    sender = context.resources.settings.mail_from
    async with context.database.unit_of_work() as session:
        email = await service.load_unsent(session, email_id=email_id)
    if email is None:
        return
    try:
        await context.resources.mail.send(build_message(email, sender=sender))
    except Exception as error:
        log.warning("sending email %s to %s failed: %r", email.id, email.to, error)
        is_final = is_permanent_failure(error) or item.is_last_attempt
        async with context.database.unit_of_work() as session:
            await service.record_failure(
                session,
                email_id=email.id,
                error=repr(error),
                is_final=is_final,
                now=context.clock.now(),
            )
        if is_final:
            raise GiveUp(repr(error)) from error
        raise
    async with context.database.unit_of_work() as session:
        await service.record_sent(
            session,
            email_id=email.id,
            message_id=message_id_for(email.id, sender),
            now=context.clock.now(),
        )


SEND_EMAIL: Kind[MailResources] = Kind(
    name=service.SEND_KIND,
    handler=send_email,
    retry=Schedule(service.RETRY_DELAYS),
    max_attempts=len(service.RETRY_DELAYS) + 1,
    lease=timedelta(minutes=10),
)


def check_sender(sender: str) -> None:
    """Raises ValueError when ``sender`` is not an email address (checked when a worker
    starts, not at the first send)."""
    sender_address(sender)
