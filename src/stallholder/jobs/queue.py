"""Enqueue and claim durable jobs. Handlers must be idempotent: a crash between claim and
commit runs a job again."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.jobs.models import Job
from stallholder.kit.ids import new_id

LEASE = timedelta(minutes=5)


def backoff(attempts: int) -> timedelta:
    """Exponential backoff with a ceiling: 2 s, 4 s, 8 s … at most an hour."""
    return timedelta(seconds=min(3600, 2 ** max(1, attempts)))


async def enqueue(
    session: AsyncSession,
    *,
    kind: str,
    payload: dict[str, Any],
    due_at: datetime,
    now: datetime,
    dedupe_key: str | None = None,
    max_attempts: int = 10,
) -> Job:
    job = Job(
        id=new_id("job"),
        kind=kind,
        payload=payload,
        dedupe_key=dedupe_key,
        due_at=due_at,
        max_attempts=max_attempts,
        created_at=now,
    )
    session.add(job)
    await session.flush()
    return job


async def claim(session: AsyncSession, *, now: datetime, limit: int) -> list[Job]:
    """Lease up to ``limit`` due jobs to this worker.

    ``SKIP LOCKED`` lets any number of workers on PostgreSQL claim disjoint jobs; on SQLite
    the unit of work already holds the single write lock.
    """
    statement = (
        select(Job)
        .where(
            Job.status == "pending",
            Job.due_at <= now,
            or_(Job.locked_until.is_(None), Job.locked_until <= now),
        )
        .order_by(Job.due_at, Job.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    jobs = list((await session.execute(statement)).scalars())
    for job in jobs:  # the rows are locked (or the database is), so this cannot race
        job.locked_until = now + LEASE
        job.attempts += 1
    await session.flush()
    return jobs


async def mark_done(session: AsyncSession, *, job_id: str, now: datetime) -> None:
    await session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(status="done", finished_at=now, locked_until=None, dedupe_key=None)
    )


async def mark_failed(session: AsyncSession, *, job: Job, error: str, now: datetime) -> None:
    """Schedule a retry with backoff, or give up after ``max_attempts``."""
    if job.attempts >= job.max_attempts:
        values: dict[str, Any] = {"status": "failed", "finished_at": now, "dedupe_key": None}
    else:
        values = {"due_at": now + backoff(job.attempts)}
    await session.execute(
        update(Job)
        .where(Job.id == job.id)
        .values(locked_until=None, last_error=error[:2000], **values)
    )
