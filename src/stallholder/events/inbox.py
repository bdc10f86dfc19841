"""The inbound inbox: events from providers, stored once and handled once.

Receiving only stores (``record``), and enqueues the work that handles the event (kind
``inbox.<source>``; the domain that understands a source registers its handler, e.g.
``orders.tasks`` for ``stripe``). A redelivered event hits ``UNIQUE(source,
external_id)`` and is dropped, so it is neither stored nor handled twice. Handlers
re-read the provider's current state rather than trusting the payload, so the order
events arrive in does not matter.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.events.models import InboxEvent
from stallholder.kit.work import Backoff, Claimed, Context, Kind, enqueue

MAX_ATTEMPTS = 8
# 30 s after the first failure, doubling, at most an hour (and the worker's jitter).
RETRY = Backoff(base=timedelta(seconds=30), cap=timedelta(hours=1))
_MAX_ERROR_LENGTH = 2000
# How long a handled event is kept (to drop a redelivery of it, and to look at): far
# beyond the providers' redelivery windows (Stripe retries an event for up to three days,
# Shopify for 48 hours, WooCommerce five times). Events never handled are kept.
RETENTION = timedelta(days=30)
PRUNE_BATCH = 500
PRUNE_KIND = "events.prune_inbox"


def kind_for(source: str) -> str:
    """The work kind that handles ``source``'s events."""
    return f"inbox.{source}"


async def record(
    session: AsyncSession,
    *,
    source: str,
    external_id: str,
    type: str,
    payload: dict[str, Any],
    now: datetime,
) -> bool:
    """Store an event and enqueue its handling. False when ``(source, external_id)`` is
    in already."""
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
        )
        .on_conflict_do_nothing(index_elements=[InboxEvent.source, InboxEvent.external_id])
        .returning(InboxEvent.id)
    )
    event_id = (await session.execute(statement)).scalar_one_or_none()
    if event_id is None:
        return False
    await enqueue(
        session,
        kind=kind_for(source),
        payload={"inbox_event_id": event_id},
        due_at=now,
        now=now,
        dedupe_key=f"inbox:{event_id}",
    )
    return True


async def get(session: AsyncSession, *, event_id: int) -> InboxEvent | None:
    return await session.get(InboxEvent, event_id)


async def lock(session: AsyncSession, *, event_id: int) -> InboxEvent | None:
    return (
        await session.execute(select(InboxEvent).where(InboxEvent.id == event_id).with_for_update())
    ).scalar_one_or_none()


def mark_processed(event: InboxEvent, *, now: datetime, note: str | None = None) -> None:
    """Handled (``note`` says why nothing was done, for an event that needed nothing)."""
    event.processed_at = now
    event.last_error = note


def note_failure(event: InboxEvent, *, error: str) -> None:
    """Keep the last failure on the row; the work engine retries it."""
    event.last_error = error[:_MAX_ERROR_LENGTH]


async def prune_handled(
    session: AsyncSession, *, before: datetime, batch: int = PRUNE_BATCH
) -> int:
    """Delete up to ``batch`` handled events received before ``before`` (oldest first,
    through the index on ``received_at``); returns how many."""
    handled = (
        select(InboxEvent.id)
        .where(InboxEvent.processed_at.is_not(None), InboxEvent.received_at < before)
        # Oldest first by the indexed time: each batch reads only the rows before ``before``.
        .order_by(InboxEvent.received_at, InboxEvent.id)
        .limit(batch)
    )
    ids = list((await session.execute(handled)).scalars())
    if ids:
        await session.execute(
            delete(InboxEvent)
            .where(InboxEvent.id.in_(ids))
            .execution_options(synchronize_session=False)
        )
    return len(ids)


async def _prune(context: Context[object], item: Claimed) -> None:
    """The periodic ``events.prune_inbox``: batches in short transactions until none are
    left."""
    before = context.clock.now() - RETENTION
    while True:
        async with context.database.unit_of_work() as session:
            if await prune_handled(session, before=before) == 0:
                return


PRUNE_INBOX: Kind[object] = Kind(name=PRUNE_KIND, handler=_prune, every=timedelta(hours=1))
