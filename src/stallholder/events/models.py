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

    ``UNIQUE(source, external_id)`` makes a redelivered event a no-op. The worker handles
    each row once: it claims rows whose ``next_attempt_at`` is due (pushing it ahead as a
    lease), and sets ``processed_at`` in the transaction that applies the event.
    ``next_attempt_at`` is None once the row is processed or has used up its attempts.
    """

    __tablename__ = "inbox_events"
    __table_args__ = (
        UniqueConstraint("source", "external_id"),
        Index("ix_inbox_events_due", "source", "next_attempt_at"),
    )

    id: Mapped[SerialPK]
    source: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[datetime]
    processed_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
