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
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.digital.delivery import Deliverables
from stallholder.digital.links import Links
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
from stallholder.orders import downloads
from stallholder.orders.schemas import OrderOut, RefundOut
from stallholder.orders.service import OrderNotFound
from stallholder.settings import Settings

log = logging.getLogger("stallholder.notifications")


async def queue_emails(
    session: AsyncSession, batch: Sequence[Event], now: datetime, *, links: Links
) -> None:
    """The outbox consumer: queue the emails the events call for. Only writes rows.
    Receipts carry download links signed with ``links``, valid from ``now``.

    Runs in the dispatch transaction, so the emails are queued exactly once per event.
    The whole batch is queued at once: the receipts' customers read in one query, the
    emails and their sending work in one multi-row insert each.
    """
    # Held while the receipts are built: their time zones are read from these.
    customers = await service.load_customers(
        session,
        (
            str(event.data["customer"])
            for event in batch
            if event.type == "order.paid" and event.data.get("customer")
        ),
    )
    # What the receipts deliver, for the whole batch in a few statements.
    delivering = await downloads.for_orders(
        session,
        order_ids=[str(event.data["id"]) for event in batch if event.type == "order.paid"],
        links=links,
        now=now,
    )
    emails = [
        email
        for event in batch
        if (email := await _email_for_event(session, event, delivering=delivering)) is not None
    ]
    del customers
    await service.queue_many(session, emails, now=now)


async def _email_for_event(
    session: AsyncSession, event: Event, *, delivering: Mapping[str, Deliverables]
) -> service.NewEmail | None:
    data = event.data
    if event.type == "order.paid":
        order = OrderOut.model_validate(data)
        found = delivering.get(order.id)
        if found is None:
            raise OrderNotFound(f"no order {order.id!r}")
        return await service.receipt(
            session, event_id=event.id, creator_id=event.creator_id, order=order, found=found
        )
    if event.type == "refund.created":
        return await service.refund_notice(
            session,
            event_id=event.id,
            creator_id=event.creator_id,
            refund=RefundOut.model_validate(data),
        )
    if event.type == "order.shipped":
        return await service.shipped_notice(
            session, event_id=event.id, creator_id=event.creator_id, shipment=data
        )
    if event.type == "order.license_keys_issued":
        return await service.license_keys_issued(
            session, event_id=event.id, creator_id=event.creator_id, issued=data
        )
    if event.type == "payment.failed":
        return await service.payment_failed(
            session, event_id=event.id, creator_id=event.creator_id, attempt=data
        )
    if event.type == "drop.raffle_offer":
        return await service.raffle_offer(
            session, event_id=event.id, creator_id=event.creator_id, offer=data
        )
    if event.type == "drop.waitlist_offer":
        return await service.waitlist_offer(
            session, event_id=event.id, creator_id=event.creator_id, offer=data
        )
    if event.type == "webhook_endpoint.disabled":
        return await service.webhook_endpoint_disabled(
            session, event_id=event.id, creator_id=event.creator_id, endpoint=data
        )
    if event.type in ("channel.paused", "channel.oversold"):
        return await service.channel_notice(
            session, event_id=event.id, creator_id=event.creator_id, type=event.type, data=data
        )
    return None


class MailResources(Protocol):
    """What sending email needs from the worker."""

    @property
    def settings(self) -> Settings: ...

    @property
    def mail(self) -> Transport: ...


async def send_emails(
    context: Context[MailResources], items: Sequence[Claimed]
) -> dict[str, BaseException | None]:
    """The handler of ``notifications.send_email``, for a claimed batch: read the emails
    in one short transaction, send them one by one with no transaction open, and record
    every outcome in one more.

    A failed send is retried on ``service.RETRY_DELAYS``; a recipient the server refuses
    for good, or a failure on the last attempt, marks the email failed and the work dead
    (``stallholder jobs retry`` sends it again). A worker that dies before recording sends
    the batch's emails again when the lease ends, with the same Message-ID and Date.
    """
    sender = context.resources.settings.mail_from
    work_by_email = {str(item.payload["email_id"]): item for item in items}
    async with context.database.unit_of_work() as session:
        unsent = await service.load_unsent(session, email_ids=list(work_by_email))
    outcomes: dict[str, BaseException | None] = {}
    sent: dict[str, str] = {}
    failed: dict[str, service.Failure] = {}
    for email in unsent:
        item = work_by_email[email.id]
        try:
            await context.resources.mail.send(build_message(email, sender=sender))
        except Exception as error:
            log.warning("sending email %s to %s failed: %r", email.id, email.to, error)
            is_final = is_permanent_failure(error) or item.is_last_attempt
            failed[email.id] = service.Failure(error=repr(error), is_final=is_final)
            outcomes[item.id] = GiveUp(repr(error)) if is_final else error
            continue
        sent[email.id] = message_id_for(email.id, sender)
    if sent or failed:
        async with context.database.unit_of_work() as session:
            await service.record_outcomes(
                session, sent=sent, failed=failed, now=context.clock.now()
            )
    return outcomes


SEND_EMAIL: Kind[MailResources] = Kind(
    name=service.SEND_KIND,
    batch_handler=send_emails,
    retry=Schedule(service.RETRY_DELAYS),
    max_attempts=len(service.RETRY_DELAYS) + 1,
    lease=timedelta(minutes=10),
)


def check_sender(sender: str) -> None:
    """Raises ValueError when ``sender`` is not an email address (checked when a worker
    starts, not at the first send)."""
    sender_address(sender)
