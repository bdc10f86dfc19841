from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from stallholder.kit.db import Base, SerialPK


class Event(Base):
    """A change of note, written in the same transaction as the change (the outbox).

    ``dispatched_at`` is set once the worker has handed the event to every consumer
    (webhook fan-out, email); consumers run in that same transaction.
    """

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_creator_type", "creator_id", "type"),
        Index("ix_events_dispatched_at", "dispatched_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    type: Mapped[str] = mapped_column(String(64))
    api_version: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    dispatched_at: Mapped[datetime | None] = mapped_column(default=None)


class InboxEvent(Base):
    """An event a provider sent us (Stripe now, channels later), stored once.

    ``UNIQUE(source, external_id)`` makes a redelivered event a no-op. Handling it is due
    work (``kit.work``, kind ``inbox.<source>``) enqueued with the row; the handler sets
    ``processed_at`` in the transaction that applies the event, so it is applied once.
    ``last_error`` is the last failure, or a note on why nothing was done.
    """

    __tablename__ = "inbox_events"
    __table_args__ = (UniqueConstraint("source", "external_id"),)

    id: Mapped[SerialPK]
    source: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Indexed for the hourly prune of handled events (``inbox.prune_handled``).
    received_at: Mapped[datetime] = mapped_column(index=True)
    processed_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)


class WebhookEndpoint(Base):
    """A URL a creator receives events at, signed per Standard Webhooks.

    ``secret`` signs every delivery; after a rotation ``previous_secret`` keeps signing
    too until ``previous_secret_expires_at``, so receivers can switch without a gap.
    ``failing_since`` and ``consecutive_failures`` count the current run of failed
    attempts; a success resets both.
    """

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str | None] = mapped_column(String(500), default=None)
    events: Mapped[list[str]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="enabled")
    disabled_reason: Mapped[str | None] = mapped_column(String(500), default=None)
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100), default=None)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    failing_since: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class WebhookDelivery(Base):
    """One event on its way to one endpoint: retried until a 2xx or the schedule ends.

    ``status`` is ``pending``, ``succeeded`` or ``failed`` (every retry used, or the
    endpoint answered 410). Sending it is due work (``kit.work``, kind
    ``events.deliver_webhook``, the delivery's id as dedupe key); ``next_attempt_at`` shows
    when a pending one is tried next.
    """

    __tablename__ = "webhook_deliveries"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id"), index=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("events.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime]
    last_status_code: Mapped[int | None] = mapped_column(default=None)
    created_at: Mapped[datetime]
    completed_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookAttempt(Base):
    """The delivery log: one row per HTTP attempt, with what the endpoint answered."""

    __tablename__ = "webhook_attempts"

    id: Mapped[SerialPK]
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id"), index=True)
    number: Mapped[int]
    attempted_at: Mapped[datetime]
    status_code: Mapped[int | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(String(500), default=None)
    latency_ms: Mapped[int]
    response_excerpt: Mapped[str | None] = mapped_column(Text, default=None)
