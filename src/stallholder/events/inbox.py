"""The inbound inbox: events from providers, stored once and handled once.

Receiving only stores (``record``); the worker handles later. A redelivered event hits
``UNIQUE(source, external_id)`` and is dropped, so it is neither stored nor handled
twice. Handlers re-read the provider's current state rather than trusting the payload,
so the order events arrive in does not matter.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.events.models import InboxEvent

MAX_ATTEMPTS = 8
# A claimed row is left alone this long; a worker that crashed mid-way is taken over after.
LEASE = timedelta(minutes=5)
_MAX_ERROR_LENGTH = 2000


def retry_delay(attempts: int) -> timedelta:
    """30 s after the first failure, doubling, at most an hour."""
    return min(timedelta(seconds=30 * 2 ** max(0, attempts - 1)), timedelta(hours=1))


async def record(
    session: AsyncSession,
    *,
    source: str,
    external_id: str,
    type: str,
    payload: dict[str, Any],
    now: datetime,
) -> bool:
    """Store an event for the worker. False when ``(source, external_id)`` is in already."""
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = (
        insert(InboxEvent)
        .values(
            source=source,
            external_id=external_id,
            type=type,
            payload=payload,
            received_at=now,
            attempts=0,
            next_attempt_at=now,
        )
        .on_conflict_do_nothing(index_elements=[InboxEvent.source, InboxEvent.external_id])
        .returning(InboxEvent.id)
    )
    return (await session.execute(statement)).scalar_one_or_none() is not None


async def claim_due(
    session: AsyncSession, *, source: str, now: datetime, limit: int
) -> list[InboxEvent]:
    """The oldest due events of ``source``, leased to this worker for ``LEASE``.

    Each claim counts as an attempt, so a row whose handling keeps crashing the worker
    still runs out of attempts.
    """
    events = list(
        (
            await session.execute(
                select(InboxEvent)
                .where(
                    InboxEvent.source == source,
                    InboxEvent.processed_at.is_(None),
                    InboxEvent.next_attempt_at <= now,
                )
                .order_by(InboxEvent.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).scalars()
    )
    for event in events:
        event.attempts += 1
        event.next_attempt_at = now + LEASE
    await session.flush()
    return events


async def lock(session: AsyncSession, *, event_id: int) -> InboxEvent | None:
    return (
        await session.execute(select(InboxEvent).where(InboxEvent.id == event_id).with_for_update())
    ).scalar_one_or_none()


def mark_processed(event: InboxEvent, *, now: datetime, note: str | None = None) -> None:
    """Handled (``note`` says why nothing was done, for an event that needed nothing)."""
    event.processed_at = now
    event.next_attempt_at = None
    event.last_error = note


def mark_failed(event: InboxEvent, *, error: str, now: datetime) -> None:
    """Try again after a delay, or never once the attempts are used up."""
    event.last_error = error[:_MAX_ERROR_LENGTH]
    event.next_attempt_at = (
        None if event.attempts >= MAX_ATTEMPTS else now + retry_delay(event.attempts)
    )
