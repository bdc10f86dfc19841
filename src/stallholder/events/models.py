from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from stallholder.kit.db import Base


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
