from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from stallholder.kit.db import Base


class Email(Base):
    """One transactional email, rendered when it was queued and sent by the worker.

    ``dedupe_key`` (``"<event id>:<kind>"`` for emails caused by an event) makes queueing
    idempotent: an event can never queue the same email twice. Sending is due work
    (``kit.work``, kind ``notifications.send_email``): its handler sends with no
    transaction open, then records the outcome here; a worker that dies mid-send leaves
    its lease to expire and the email is sent again (at-least-once, with the same
    Message-ID; docs/email.md).
    """

    __tablename__ = "emails"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # None for the platform's own emails to a buyer (a portal sign-in link), which no one
    # creator sends.
    creator_id: Mapped[str | None] = mapped_column(ForeignKey("creators.id"), index=True)
    kind: Mapped[str] = mapped_column(String(64))  # the template: receipt, refund, …
    to_address: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(300))
    text_body: Mapped[str] = mapped_column(Text)
    html_body: Mapped[str] = mapped_column(Text)
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(16))  # pending | sent | failed
    attempts: Mapped[int] = mapped_column(default=0)  # sends tried (and recorded)
    # The Message-ID header it was sent with (the same on every attempt).
    message_id: Mapped[str | None] = mapped_column(String(300), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
