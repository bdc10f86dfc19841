"""Queueing transactional emails, and the bookkeeping of sending them.

An email is rendered when it is queued, in the transaction of whatever caused it (an
event being dispatched, a sign-in request): what is sent is fixed then, and an email
exists if and only if its cause committed. Sending it is due work enqueued in the same
transaction (``tasks.send_email``, run by the worker outside any transaction).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts import service as accounts
from stallholder.accounts.models import Customer
from stallholder.checkout.models import CheckoutSession
from stallholder.digital.delivery import Deliverables
from stallholder.fulfilment.addresses import ShippingAddress, address_lines
from stallholder.kit.ids import new_id
from stallholder.kit.work import NewWork, enqueue_many
from stallholder.notifications.models import Email
from stallholder.notifications.rendering import Rendered, render
from stallholder.notifications.transport import OutgoingEmail
from stallholder.orders import service as orders
from stallholder.orders.schemas import OrderOut, RefundOut

log = logging.getLogger("stallholder.notifications")

SEND_KIND = "notifications.send_email"
# The wait after the 1st, 2nd, … failed attempt (30 s, 2 min, 10 min, 1 h, 6 h, 24 h: seven
# attempts over about a day and a half); after the last one the email is failed.
RETRY_DELAYS = (
    timedelta(seconds=30),
    timedelta(minutes=2),
    timedelta(minutes=10),
    timedelta(hours=1),
    timedelta(hours=6),
    timedelta(hours=24),
)
# Emails whose body is a credential: blanked once sent or given up on.
SENSITIVE_KINDS = frozenset({"magic_link", "sign_in_link"})
PLATFORM_NAME = "Stallholder"
REDACTED = "[removed after sending]"

_REFUND_REASONS = {
    "requested_by_customer": "You asked for a refund.",
    "duplicate": "The payment was a duplicate.",
}


@dataclass(frozen=True, slots=True)
class NewEmail:
    """An email rendered and ready to queue (``queue_many``); ``creator_id`` None for
    the platform's own emails (a portal sign-in link)."""

    creator_id: str | None
    kind: str
    to: str
    dedupe_key: str
    rendered: Rendered


def compose(
    *, creator_id: str | None, kind: str, to: str, context: Mapping[str, Any], dedupe_key: str
) -> NewEmail:
    """Render an email now: what is sent is fixed when it is queued."""
    return NewEmail(
        creator_id=creator_id,
        kind=kind,
        to=to,
        dedupe_key=dedupe_key,
        rendered=render(kind, {**context, "to": to}),
    )


async def queue_many(
    session: AsyncSession, emails: Sequence[NewEmail], *, now: datetime
) -> list[str]:
    """Queue ``emails`` and the work that sends each, skipping any whose ``dedupe_key``
    exists already; returns the ids of those queued.

    One multi-row ``INSERT … ON CONFLICT (dedupe_key) DO NOTHING RETURNING`` on both
    databases (a duplicate does not fail the caller's transaction) and one for the work.
    """
    if not emails:
        return []
    rows = [
        {
            "id": new_id("em"),
            "creator_id": email.creator_id,
            "kind": email.kind,
            "to_address": email.to,
            "subject": email.rendered.subject,
            "text_body": email.rendered.text,
            "html_body": email.rendered.html,
            "dedupe_key": email.dedupe_key,
            "status": "pending",
            "attempts": 0,
            "message_id": None,
            "last_error": None,
            "created_at": now,
            "sent_at": None,
        }
        for email in emails
    ]
    table: Table = Email.__table__  # type: ignore[assignment]
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(table)
        .on_conflict_do_nothing(index_elements=[table.c.dedupe_key])
        .returning(table.c.id, table.c.creator_id)
    )
    inserted = (await session.execute(statement, rows)).all()
    if len(inserted) < len(rows):
        log.info("%d of %d emails were queued already", len(rows) - len(inserted), len(rows))
    await enqueue_many(
        session,
        [
            NewWork(
                kind=SEND_KIND,
                payload={"email_id": email_id},
                due_at=now,
                dedupe_key=email_id,
                creator_id=creator_id,
            )
            for email_id, creator_id in inserted
        ],
        now=now,
    )
    return [email_id for email_id, _ in inserted]


async def queue_email(
    session: AsyncSession,
    *,
    creator_id: str | None,
    kind: str,
    to: str,
    context: Mapping[str, Any],
    dedupe_key: str,
    now: datetime,
) -> str | None:
    """Render the email now and queue it, unless one with ``dedupe_key`` exists already.

    Returns the new email's id, or None when it was a duplicate. A duplicate does not
    fail the caller's transaction: the insert ignores the conflict on both databases.
    """
    email = compose(creator_id=creator_id, kind=kind, to=to, context=context, dedupe_key=dedupe_key)
    queued = await queue_many(session, [email], now=now)
    return queued[0] if queued else None


async def load_customers(session: AsyncSession, customer_ids: Iterable[str]) -> list[Customer]:
    """Read these customers in one query, so the ``session.get`` of each that follows
    needs no round trip (hold the returned list while they are used: the session's
    identity map keeps only objects someone references)."""
    wanted = sorted(set(customer_ids))
    if not wanted:
        return []
    return list((await session.execute(select(Customer).where(Customer.id.in_(wanted)))).scalars())


async def _local_date(session: AsyncSession, *, customer_id: str, at: datetime) -> date:
    """The calendar day ``at`` falls on where the customer lives."""
    customer = await session.get(Customer, customer_id)
    zone = ZoneInfo(customer.time_zone if customer is not None else "UTC")
    return at.astimezone(zone).date()


async def receipt(
    session: AsyncSession,
    *,
    event_id: str,
    creator_id: str,
    order: OrderOut,
    found: Deliverables,
) -> NewEmail:
    """The buyer's receipt for a paid order (``order.paid``), with what it delivers
    (``found``: ``orders.downloads.for_orders``, download links and license keys)."""
    return compose(
        creator_id=creator_id,
        kind="receipt",
        to=order.customer_email,
        dedupe_key=f"{event_id}:receipt",
        context={
            "merchant": order.receipt.merchant,
            "number": order.receipt.number,
            "order_id": order.id,
            "issued": await _local_date(session, customer_id=order.customer, at=order.created),
            "currency": order.currency,
            "lines": [line.model_dump() for line in order.line_items],
            "amount_subtotal": order.amount_subtotal,
            "amount_total": order.amount_total,
            "downloads": [
                {
                    "filename": d.filename,
                    "url": d.url,
                    "expires": d.expires_at.date(),
                    "limit": d.download_limit,
                }
                for d in found.downloads
            ],
            "license_keys": [k.key for k in found.license_keys],
            "license_keys_missing": found.license_keys_missing,
            "shipping": None
            if order.shipping is None
            else {
                "display_name": order.shipping.display_name,
                "amount": order.shipping.amount,
                "address_lines": address_lines(
                    ShippingAddress.from_dict(order.shipping.address.model_dump())
                ),
            },
        },
    )


async def refund_notice(
    session: AsyncSession, *, event_id: str, creator_id: str, refund: RefundOut
) -> NewEmail:
    """Tell the buyer about a refund (``refund.created``)."""
    order = await orders.get_order(session, creator_id=creator_id, order_id=refund.order)
    creator = await accounts.get_creator(session, creator_id)
    return compose(
        creator_id=creator_id,
        kind="refund",
        to=order.customer_email,
        dedupe_key=f"{event_id}:refund",
        context={
            "merchant": creator.display_name,
            "number": order.receipt_number,
            "refund_id": refund.id,
            "amount": refund.amount,
            "currency": refund.currency,
            "order_total": order.amount_total,
            "reason": _REFUND_REASONS.get(refund.reason or ""),
            "issued": await _local_date(session, customer_id=order.customer_id, at=refund.created),
        },
    )


async def shipped_notice(
    session: AsyncSession, *, event_id: str, creator_id: str, shipment: Mapping[str, Any]
) -> NewEmail:
    """Tell the buyer their parcel left, with its tracking (``order.shipped``)."""
    order = await orders.get_order(session, creator_id=creator_id, order_id=str(shipment["order"]))
    creator = await accounts.get_creator(session, creator_id)
    return compose(
        creator_id=creator_id,
        kind="shipped",
        to=order.customer_email,
        dedupe_key=f"{event_id}:shipped",
        context={
            "merchant": creator.display_name,
            "number": order.receipt_number,
            "items": list(shipment["items"]),
            "carrier": shipment.get("carrier"),
            "tracking_number": shipment.get("tracking_number"),
            "tracking_url": shipment.get("tracking_url"),
            "address_lines": []
            if order.shipping_address is None
            else address_lines(ShippingAddress.from_dict(order.shipping_address)),
        },
    )


async def license_keys_issued(
    session: AsyncSession, *, event_id: str, creator_id: str, issued: Mapping[str, Any]
) -> NewEmail:
    """Send the buyer the license keys their order was owed, now issued
    (``order.license_keys_issued``)."""
    order = await orders.get_order(session, creator_id=creator_id, order_id=str(issued["order"]))
    creator = await accounts.get_creator(session, creator_id)
    product_id = str(issued["product"])
    return compose(
        creator_id=creator_id,
        kind="license_keys",
        to=order.customer_email,
        dedupe_key=f"{event_id}:license_keys",
        context={
            "merchant": creator.display_name,
            "number": order.receipt_number,
            "products": sorted(
                {li.description for li in order.line_items if li.product_id == product_id}
            ),
            "license_keys": [str(key) for key in issued["keys"]],
            "license_keys_missing": int(issued["license_keys_missing"]),
        },
    )


async def payment_failed(
    session: AsyncSession, *, event_id: str, creator_id: str, attempt: Mapping[str, Any]
) -> NewEmail | None:
    """Tell the buyer a payment failed (``payment.failed``); skipped, and logged, when the
    checkout session has no email address."""
    checkout_id = attempt.get("checkout_session")
    checkout = await session.get(CheckoutSession, checkout_id) if checkout_id else None
    if checkout is None or not checkout.customer_email:
        log.info(
            "payment %s failed but checkout session %s has no email address; no email sent",
            attempt["id"],
            checkout_id,
        )
        return None
    creator = await accounts.get_creator(session, creator_id)
    return compose(
        creator_id=creator_id,
        kind="payment_failed",
        to=checkout.customer_email,
        dedupe_key=f"{event_id}:payment_failed",
        context={
            "merchant": creator.display_name,
            "amount": attempt["amount"],
            "currency": attempt["currency"],
            "failure_message": attempt.get("failure_message"),
            "checkout_session": checkout.id,
        },
    )


async def raffle_offer(
    session: AsyncSession, *, event_id: str, creator_id: str, offer: Mapping[str, Any]
) -> NewEmail:
    """Tell a raffle entrant they may buy one unit until the offer expires
    (``drop.raffle_offer``)."""
    creator = await accounts.get_creator(session, creator_id)
    return compose(
        creator_id=creator_id,
        kind="raffle_offer",
        to=str(offer["email"]),
        dedupe_key=f"{event_id}:raffle_offer",
        context={
            "merchant": creator.display_name,
            "drop_name": offer["drop_name"],
            "expires_at": str(offer["expires_at"]),
        },
    )


async def waitlist_offer(
    session: AsyncSession, *, event_id: str, creator_id: str, offer: Mapping[str, Any]
) -> NewEmail:
    """Tell a waitlisted buyer a unit is held for them, with the link to its checkout
    (``drop.waitlist_offer``)."""
    creator = await accounts.get_creator(session, creator_id)
    return compose(
        creator_id=creator_id,
        kind="waitlist_offer",
        to=str(offer["email"]),
        dedupe_key=f"{event_id}:waitlist_offer",
        context={
            "merchant": creator.display_name,
            "drop_name": offer["drop_name"],
            "url": offer["url"],
            "expires_at": str(offer["expires_at"]),
        },
    )


async def webhook_endpoint_disabled(
    session: AsyncSession, *, event_id: str, creator_id: str, endpoint: Mapping[str, Any]
) -> NewEmail | None:
    """Tell the creator that a webhook endpoint was disabled (``webhook_endpoint.disabled``).

    An endpoint payload without an id or URL is logged as an error and skipped rather than
    raised: a consumer that raises would hold up the whole outbox.
    """
    if not endpoint.get("id") or not endpoint.get("url"):
        log.error("event %s has no endpoint id or url; no email sent: %r", event_id, endpoint)
        return None
    creator = await accounts.get_creator(session, creator_id)
    return compose(
        creator_id=creator_id,
        kind="webhook_endpoint_disabled",
        to=creator.email,
        dedupe_key=f"{event_id}:webhook_endpoint_disabled",
        context={
            "creator": creator.display_name,
            "endpoint_id": endpoint["id"],
            "url": endpoint["url"],
            "reason": endpoint.get("disabled_reason")
            or "deliveries to it kept failing after every retry",
        },
    )


async def channel_notice(
    session: AsyncSession,
    *,
    event_id: str,
    creator_id: str,
    type: str,
    data: Mapping[str, Any],
) -> NewEmail | None:
    """Tell the creator a channel was paused (``channel.paused``: it refused our
    credentials) or an order on it was oversold (``channel.oversold``)."""
    kind = "channel_paused" if type == "channel.paused" else "channel_oversold"
    creator = await accounts.get_creator(session, creator_id)
    return compose(
        creator_id=creator_id,
        kind=kind,
        to=creator.email,
        dedupe_key=f"{event_id}:{kind}",
        context={
            "creator": creator.display_name,
            "channel_name": data.get("channel_name") or data.get("name") or "your channel",
            "channel_id": data.get("channel") or data.get("id"),
            "reason": data.get("paused_reason") or "",
            "order": data.get("order_name") or data.get("order") or "",
            "sku": data.get("sku") or "",
            "quantity": data.get("quantity") or 0,
        },
    )


async def queue_magic_link(
    session: AsyncSession,
    *,
    creator_id: str,
    url: str,
    now: datetime,
    customer_id: str | None = None,
    email: str | None = None,
) -> str | None:
    """Email a sign-in link to a customer of ``creator_id``, given by id or by address.

    The same ``url`` is never mailed twice. The body holds a credential, so it is blanked
    in the database once the email is sent (or given up on).

    Raises:
        ValueError: neither or both of ``customer_id`` and ``email`` were given.
        CustomerNotFound, CreatorNotFound.
    """
    if (customer_id is None) == (email is None):
        raise ValueError("give exactly one of customer_id and email")
    if customer_id is not None:
        customer = await accounts.get_customer(
            session, creator_id=creator_id, customer_id=customer_id
        )
        email = customer.email
    assert email is not None
    creator = await accounts.get_creator(session, creator_id)
    digest = hashlib.sha256(url.encode()).hexdigest()
    return await queue_email(
        session,
        creator_id=creator_id,
        kind="magic_link",
        to=email,
        dedupe_key=f"magic_link:{digest}",
        now=now,
        context={"merchant": creator.display_name, "url": url},
    )


async def queue_sign_in_link(
    session: AsyncSession,
    *,
    audience: str,
    to: str,
    url: str,
    expires_in: timedelta,
    creator_id: str | None,
    now: datetime,
) -> str | None:
    """Email a sign-in link: to a buyer for the portal (a platform email, no creator) or
    to a creator for its dashboard. Its body is blanked once sent, as a magic link's is.

    Raises:
        CreatorNotFound: ``creator_id`` names no creator.
    """
    if audience == "creator":
        assert creator_id is not None
        creator = await accounts.get_creator(session, creator_id)
        headline = f"Sign in to the {creator.display_name} dashboard"
        lead = f"Use this link to sign in to {creator.display_name}'s dashboard on {PLATFORM_NAME}:"
    else:
        headline = f"Your {PLATFORM_NAME} sign-in link"
        lead = (
            "Use this link to sign in and manage your subscriptions, orders and receipts "
            f"with every creator you buy from on {PLATFORM_NAME}:"
        )
    return await queue_email(
        session,
        creator_id=creator_id,
        kind="sign_in_link",
        to=to,
        dedupe_key=f"sign_in_link:{hashlib.sha256(url.encode()).hexdigest()}",
        now=now,
        context={
            "headline": headline,
            "lead": lead,
            "url": url,
            "minutes": int(expires_in.total_seconds() // 60),
            "platform": PLATFORM_NAME,
        },
    )


async def load_unsent(session: AsyncSession, *, email_ids: Sequence[str]) -> list[OutgoingEmail]:
    """The emails to send among ``email_ids``, in one query, by id. Left out: one sent
    already, or one that failed and whose body was a credential that is gone now. (A
    failed email is sent again when its dead work is retried: ``stallholder jobs retry``.)"""
    if not email_ids:
        return []
    emails = (
        await session.execute(select(Email).where(Email.id.in_(email_ids)).order_by(Email.id))
    ).scalars()
    return [
        OutgoingEmail(
            id=email.id,
            to=email.to_address,
            subject=email.subject,
            text=email.text_body,
            html=email.html_body,
            created_at=email.created_at,
        )
        for email in emails
        if email.status != "sent"
        and not (email.status == "failed" and email.kind in SENSITIVE_KINDS)
    ]


@dataclass(frozen=True, slots=True)
class Failure:
    """A send that failed; ``is_final`` (a permanent refusal, or the last attempt) marks
    the email failed for good."""

    error: str
    is_final: bool


def _redact_if_sensitive(email: Email) -> None:
    if email.kind in SENSITIVE_KINDS:
        email.text_body = email.html_body = REDACTED


async def record_outcomes(
    session: AsyncSession,
    *,
    sent: Mapping[str, str],
    failed: Mapping[str, Failure],
    now: datetime,
) -> None:
    """Record what sending did, for a batch at once: ``sent`` maps an email's id to the
    Message-ID it went with, ``failed`` to its failure. One locked read and the updates
    in one flush. An email recorded as sent already stays as it is (a second report after
    a resend changes nothing); the work engine schedules the next attempt of a failure."""
    ids = sorted({*sent, *failed})
    if not ids:
        return
    emails = (
        await session.execute(
            select(Email).where(Email.id.in_(ids)).order_by(Email.id).with_for_update()
        )
    ).scalars()
    for email in emails:
        if email.status == "sent":
            continue
        email.attempts += 1
        if email.id in sent:
            email.status = "sent"
            email.sent_at = now
            email.message_id = sent[email.id]
            email.last_error = None
            _redact_if_sensitive(email)
            continue
        failure = failed[email.id]
        email.last_error = failure.error[:2000]
        if failure.is_final:
            email.status = "failed"
            _redact_if_sensitive(email)
            log.error(
                "email %s (%s to %s) failed after %d attempts; giving up: %s",
                email.id,
                email.kind,
                email.to_address,
                email.attempts,
                failure.error,
            )
    await session.flush()


async def list_emails(session: AsyncSession, *, creator_id: str, limit: int) -> list[Email]:
    """The creator's newest ``limit`` emails, whatever their state: the dashboard's mail
    outbox in the embedded default (a credential's body reads ``REDACTED`` once sent)."""
    return list(
        (
            await session.execute(
                select(Email)
                .where(Email.creator_id == creator_id)
                .order_by(Email.created_at.desc(), Email.id.desc())
                .limit(limit)
            )
        ).scalars()
    )
