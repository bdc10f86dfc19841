from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from stallholder.kit.db import Base


class Job(Base):
    """A unit of durable work with a due time (ADR 0003).

    Claimed with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL; a claim is a lease
    (``locked_until``), so work claimed by a worker that died is claimed again.
    """

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_due", "status", "due_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    # A job with a dedupe key is enqueued at most once while it is pending.
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True, default=None)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | done | failed
    due_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=10)
    locked_until: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
