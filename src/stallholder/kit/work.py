"""One engine for due work (ADR 0008): every kind of work that is due at some time.

Domains *enqueue* work in their own transaction (``enqueue``: a kind, a JSON payload, a
due time, an optional dedupe key and ``creator_id``) and *register* a handler per kind
(``Kind``). The worker (``stallholder.jobs``) claims due work with a lease and runs the
handlers; no domain writes a lease loop of its own.

States of a work item::

    pending --claim--> running --handler succeeds--> (row deleted; a periodic kind
       ^                  |                          goes back to pending, due again
       |                  |                          after ``every``)
       +---- fails, ------+--- fails on its last attempt, or GiveUp ---> dead
             retry due after a backoff with jitter                      (last_error kept;
       +---- lease ends (the worker died) -- claimed again              ``retry`` revives)

- **Claiming is a lease.** ``claim`` moves due rows to ``running``, counts the attempt and
  sets ``due_at`` to the end of the lease, in one statement. On PostgreSQL the rows are
  picked with ``FOR UPDATE SKIP LOCKED``, so any number of workers claim disjoint rows; on
  SQLite every transaction holds the one write lock (``BEGIN IMMEDIATE``). A running row
  whose lease has ended is due again: its worker died.
- **Handlers run with no transaction open.** A handler gets a ``Context`` (the database,
  the clock and the worker's resources: settings, the payment gateway, an HTTP client …)
  and opens its own short units of work. A handler that calls out (SMTP, HTTP, a payment
  gateway) reads what it needs, calls out, then records the outcome.
- **Every handler must be idempotent.** A crash between the claim and the handler's
  commit runs the work again: the email is sent again (with the same Message-ID), the
  webhook again (with the same ``webhook-id``), the gateway asked again (with the same
  idempotency key). Handlers re-read their rows and do nothing for work already done.
- **Failures retry with exponential backoff and jitter** (``Backoff``/``Schedule`` and
  ``jittered``): each delay is stretched by a random fraction up to ``jitter``, so work
  that failed together does not come back together. After ``max_attempts`` (or a
  ``GiveUp``) the item is ``dead`` with its last error, listed by ``stallholder jobs`` and
  put back with ``stallholder jobs retry``.
- **Waking the worker.** ``enqueue`` (and ``wake_after_commit``) mark the session; when it
  commits, in-process workers are signalled and, on PostgreSQL, a notification on
  ``stallholder_work`` is sent in the same transaction, so workers elsewhere wake too
  (``Wakeup``). Its payload says which process sent it and which kinds it enqueued
  (``notify_payload``): a worker ignores its own process's (already signalled) and wakes
  only the lanes of the kinds named. Work due
  more than ``WAKE_HORIZON`` after it is enqueued (a renewal, a reminder) wakes no one: a
  worker never sleeps longer than ``WAKE_HORIZON``, so it looks again before that work
  is due.
- **Periodic kinds** (``every``) are sweeps: one schedule item each (its dedupe key is the
  kind's name, ``ensure_periodic``), due again ``every`` after each run; ``run_soon``
  adds a one-off extra run. Deadlines kept on rows that rarely need action (a session's
  expiry, a charge's settlement) are swept rather than enqueued per row (ADR 0029).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import secrets
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    JSON,
    Index,
    String,
    Text,
    and_,
    delete,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, Session, SessionTransaction, mapped_column

from stallholder.kit.clock import Clock
from stallholder.kit.db import Base, Database, commits_whole_transaction, is_whole_transaction
from stallholder.kit.ids import new_id

log = logging.getLogger("stallholder.work")

PENDING, RUNNING, DEAD = "pending", "running", "dead"
LIVE_STATES = (PENDING, RUNNING)
STATES = (PENDING, RUNNING, DEAD)
NOTIFY_CHANNEL = "stallholder_work"
_MAX_ERROR_LENGTH = 2000
_WAKE = "stallholder.work.wake"
_WAKE_KINDS = "stallholder.work.wake_kinds"
_WAKE_ALL = "stallholder.work.wake_all"
_QUIET = "stallholder.work.quiet"
# The longest a worker sleeps between looks at the queue, and so how far ahead work may be
# due and still not wake anyone when it is enqueued (it is found by the next look).
WAKE_HORIZON = timedelta(seconds=60)
# The partial unique index's predicate, as literal SQL: PostgreSQL matches an ON CONFLICT
# target to a partial index only when the WHERE is the same expression, not parameters.
_LIVE_SQL = "state IN ('pending', 'running')"


class WorkItem(Base):
    """A unit of due work (ADR 0008). Finished work is deleted; dead work stays.

    ``due_at`` is when a pending item is due, and for a running item when its lease ends
    (after which it is due again). ``dedupe_key`` is unique among live (pending or running)
    items, so enqueueing the same work twice while it waits is a no-op.
    """

    __tablename__ = "work_items"
    __table_args__ = (
        Index("ix_work_items_due", "state", "due_at"),
        # A claim asks for one kind's live items due now: without the kind first, it read
        # every live item due now, of every kind (a backlog of emails behind a renewal
        # run made each charge claim read tens of thousands of rows).
        Index(
            "ix_work_items_live_kind_due",
            "kind",
            "due_at",
            "id",
            sqlite_where=text(_LIVE_SQL),
            postgresql_where=text(_LIVE_SQL),
        ),
        Index(
            "uq_work_items_live_dedupe_key",
            "dedupe_key",
            unique=True,
            sqlite_where=text(_LIVE_SQL),
            postgresql_where=text(_LIVE_SQL),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The creator whose data the work concerns; None for platform-wide work.
    creator_id: Mapped[str | None] = mapped_column(String(40), index=True, default=None)
    dedupe_key: Mapped[str | None] = mapped_column(String(200), default=None)
    state: Mapped[str] = mapped_column(String(16), default=PENDING)
    due_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


# Retry policies ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential: ``base``, 2×``base``, 4×``base`` … at most ``cap``."""

    base: timedelta = timedelta(seconds=2)
    cap: timedelta = timedelta(hours=1)

    def delay(self, attempts: int) -> timedelta | None:
        doubled: timedelta = self.base * 2 ** max(0, attempts - 1)
        return min(self.cap, doubled)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A published schedule: ``delays[n-1]`` after the n-th failed attempt, then give up."""

    delays: tuple[timedelta, ...]

    def delay(self, attempts: int) -> timedelta | None:
        if attempts < 1 or attempts > len(self.delays):
            return None
        return self.delays[attempts - 1]


RetryPolicy = Backoff | Schedule


def jittered(delay: timedelta, *, jitter: float, draw: Callable[[], float]) -> timedelta:
    """``delay`` stretched by a random fraction in ``[0, jitter)``: never earlier than the
    policy says, at most ``(1 + jitter) × delay``. ``draw`` returns a uniform ``[0, 1)``."""
    return delay * (1 + jitter * draw())


# What handlers get and give back ------------------------------------------------------

ResourcesT_co = TypeVar("ResourcesT_co", covariant=True)
ResourcesT_contra = TypeVar("ResourcesT_contra", contravariant=True)


@dataclass(frozen=True, slots=True)
class Context(Generic[ResourcesT_co]):
    """What a handler runs with. ``resources`` is the worker's (settings, the payment
    gateway, a pooled HTTP client, the mail transport); a handler's signature names only
    what it needs, as a Protocol."""

    database: Database
    clock: Clock
    resources: ResourcesT_co
    jitter: float = 0.0
    draw: Callable[[], float] = random.random

    def retry_at(self, delay: timedelta) -> datetime:
        """When to retry after ``delay`` from now, with the worker's jitter: for a handler
        that shows the time (``Retry(at=…)``) and must agree with the engine."""
        return self.clock.now() + jittered(delay, jitter=self.jitter, draw=self.draw)


@dataclass(frozen=True, slots=True)
class Claimed:
    """One claimed work item, as its handler sees it."""

    id: str
    kind: str
    payload: dict[str, Any]
    creator_id: str | None
    attempt: int  # this attempt, counting from 1
    max_attempts: int
    dedupe_key: str | None = None

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts


class Retry(Exception):
    """Raised (or returned by a batch handler): try again at ``at`` exactly, or after
    ``delay`` (jittered), or when the kind's policy says. With ``fresh`` the item is not
    failing but has more to do (its work changed while it ran): its attempts start over,
    so a later real failure backs off from the policy's first delay, not from one grown
    by every re-run."""

    def __init__(
        self,
        error: str,
        *,
        delay: timedelta | None = None,
        at: datetime | None = None,
        fresh: bool = False,
    ) -> None:
        super().__init__(error)
        self.error = error
        self.delay = delay
        self.at = at
        self.fresh = fresh


class GiveUp(Exception):
    """Raised by a handler: this work can never succeed; it becomes dead at once."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


# A handler for one item: returns when done, raises to fail (Retry, GiveUp or any error).
Handler = Callable[[Context[ResourcesT_contra], Claimed], Awaitable[None]]
# A handler for a whole claimed batch: returns each item's failure (absent or None: done).
BatchHandler = Callable[
    [Context[ResourcesT_contra], Sequence[Claimed]],
    Awaitable[Mapping[str, BaseException | None]],
]


@dataclass(frozen=True, slots=True)
class Kind(Generic[ResourcesT_contra]):
    """A kind of work and how it runs. Give ``handler`` (items run one by one, or up to
    ``concurrency`` at once) or ``batch_handler`` (the whole claimed batch at once).

    ``every`` makes the kind periodic: it is enqueued once when a worker starts and,
    after each success, is due again ``every`` later."""

    name: str
    handler: Handler[ResourcesT_contra] | None = None
    batch_handler: BatchHandler[ResourcesT_contra] | None = None
    retry: RetryPolicy = field(default_factory=Backoff)
    max_attempts: int = 10
    lease: timedelta = timedelta(minutes=5)
    batch_size: int = 20
    concurrency: int = 1
    # Batches one worker runs at once (each claimed on its own): while one batch records
    # its outcomes, the next is already calling out.
    parallel_batches: int = 1
    every: timedelta | None = None
    # Runs in a loop of its own in the worker (``Worker``), not in the shared pass: its
    # batches never wait for other kinds' to finish, nor theirs for its (a channel's
    # pushes, paced by the channel's rate limit, must not hold up e-mail or other channels).
    lane: bool = False

    def __post_init__(self) -> None:
        if (self.handler is None) == (self.batch_handler is None):
            raise ValueError(f"kind {self.name!r}: give exactly one of handler, batch_handler")

    async def run(
        self, context: Context[ResourcesT_contra], items: Sequence[Claimed]
    ) -> Mapping[str, BaseException | None]:
        """Each item's failure (None when it succeeded)."""
        if self.batch_handler is not None:
            return await self.batch_handler(context, items)
        handler = self.handler
        assert handler is not None
        gate = asyncio.Semaphore(max(1, self.concurrency))

        async def one(item: Claimed) -> BaseException | None:
            async with gate:
                try:
                    await handler(context, item)
                except Exception as error:
                    return error
                return None

        outcomes = await asyncio.gather(*(one(item) for item in items))
        return {item.id: outcome for item, outcome in zip(items, outcomes, strict=True)}


class Registry(Generic[ResourcesT_contra]):
    """The kinds one worker runs. A domain exposes its ``Kind``s; the worker registers them.

    A worker claims only the kinds it has registered, so work it cannot do (say, a
    provider's inbox without that provider's gateway) waits for a worker that can."""

    def __init__(self, kinds: Iterable[Kind[ResourcesT_contra]] = ()) -> None:
        self._kinds: dict[str, Kind[ResourcesT_contra]] = {}
        for kind in kinds:
            self.register(kind)

    def register(self, kind: Kind[ResourcesT_contra]) -> None:
        """Raises ValueError for a kind registered twice."""
        if kind.name in self._kinds:
            raise ValueError(f"kind {kind.name!r} is registered already")
        self._kinds[kind.name] = kind

    def get(self, name: str) -> Kind[ResourcesT_contra] | None:
        return self._kinds.get(name)

    def __iter__(self) -> Iterator[Kind[ResourcesT_contra]]:
        return iter(list(self._kinds.values()))

    @property
    def names(self) -> list[str]:
        return list(self._kinds)


# Enqueueing ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewWork:
    kind: str
    payload: dict[str, Any]
    due_at: datetime
    dedupe_key: str | None = None
    creator_id: str | None = None


@functools.cache
def _insert_many(dialect: str) -> Any:
    """``enqueue_many``'s statement for the dialect, built once: a Core insert (not the
    ORM's bulk path: several times cheaper, and nothing here needs the identity map) that
    skips an item whose dedupe key is live and returns the ids inserted."""
    table = WorkItem.__table__
    return (
        (postgresql if dialect == "postgresql" else sqlite)
        .insert(table)
        .on_conflict_do_nothing(index_elements=["dedupe_key"], index_where=text(_LIVE_SQL))
        .returning(WorkItem.__table__.c.id)
    )


async def enqueue(
    session: AsyncSession,
    *,
    kind: str,
    payload: dict[str, Any],
    due_at: datetime,
    now: datetime,
    dedupe_key: str | None = None,
    creator_id: str | None = None,
) -> str | None:
    """Add work in the caller's transaction: it exists if and only if the caller commits.

    Returns the new item's id, or None when a live item with ``dedupe_key`` exists already
    (``INSERT … ON CONFLICT DO NOTHING`` on both databases, so the caller's transaction is
    unharmed). Workers are woken when the transaction commits, unless the work is due
    more than ``WAKE_HORIZON`` from ``now``."""
    ids = await enqueue_many(
        session,
        [
            NewWork(
                kind=kind,
                payload=payload,
                due_at=due_at,
                dedupe_key=dedupe_key,
                creator_id=creator_id,
            )
        ],
        now=now,
    )
    return ids[0] if ids else None


async def reschedule(
    session: AsyncSession, *, dedupe_key: str, due_at: datetime, now: datetime
) -> bool:
    """Move the pending item of ``dedupe_key`` to ``due_at`` in the caller's transaction
    (a drop whose opening moved). False when there is none pending (it ran, or runs)."""
    moved = await session.execute(
        update(WorkItem)
        .where(WorkItem.dedupe_key == dedupe_key, WorkItem.state == PENDING)
        .values(due_at=due_at)
        .execution_options(synchronize_session=False)
    )
    if not getattr(moved, "rowcount", 0):
        return False
    if due_at - now <= WAKE_HORIZON:
        wake_after_commit(session)
    return True


async def run_soon(session: AsyncSession, *, kind: str, now: datetime) -> None:
    """An extra run of periodic ``kind`` as soon as this transaction commits, beside its
    schedule (a sweep that has a row to act on now rather than at its next run): a
    one-off item, deleted once it has run. Each call adds one, so a run already under
    way when this commits never hides a later request."""
    await enqueue(session, kind=kind, payload={}, due_at=now, now=now)


async def enqueue_many(
    session: AsyncSession, items: Sequence[NewWork], *, now: datetime
) -> list[str]:
    """``enqueue`` for several items in one statement; returns the ids of those inserted."""
    if not items:
        return []
    rows = [
        {
            "id": new_id("wrk"),
            "kind": item.kind,
            "payload": item.payload,
            "creator_id": item.creator_id,
            "dedupe_key": item.dedupe_key,
            "state": PENDING,
            "due_at": item.due_at,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        for item in items
    ]
    # One statement executed for many rows: SQLAlchemy sends them as multi-row INSERTs in
    # batches ("insertmanyvalues"), with the compiled statement cached.
    statement = _insert_many(session.get_bind().dialect.name)
    inserted = list((await session.execute(statement, rows)).scalars())
    # Work due later than a sleeping worker's next look needs no wake-up (no NOTIFY, no
    # pass): that look finds it. Woken for nothing, a worker makes a pass of several
    # round trips.
    due_soon = {item.kind for item in items if item.due_at <= now + WAKE_HORIZON}
    if inserted and due_soon:
        wake_after_commit(session, kinds=due_soon)
    return inserted


async def ensure_periodic(
    session: AsyncSession, kinds: Iterable[Kind[Any]], *, now: datetime
) -> None:
    """Enqueue each periodic kind once (its name is its dedupe key), due now."""
    await enqueue_many(
        session,
        [
            NewWork(kind=kind.name, payload={}, due_at=now, dedupe_key=kind.name)
            for kind in kinds
            if kind.every is not None
        ],
        now=now,
    )


# Claiming and settling ----------------------------------------------------------------


async def claim(session: AsyncSession, *, kind: Kind[Any], now: datetime) -> list[Claimed]:
    """Lease up to ``kind.batch_size`` due items of ``kind`` to this worker, in one
    statement: each becomes ``running``, its attempt is counted, and it is due again
    when the lease ends."""
    due = (
        select(WorkItem.id)
        .where(
            WorkItem.kind == kind.name,
            WorkItem.state.in_(LIVE_STATES),
            WorkItem.due_at <= now,
        )
        .order_by(WorkItem.due_at, WorkItem.id)
        .limit(kind.batch_size)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    rows = await session.execute(
        update(WorkItem)
        .where(WorkItem.id.in_(due))
        .values(
            state=RUNNING,
            attempts=WorkItem.attempts + 1,
            due_at=now + kind.lease,
            updated_at=now,
        )
        .returning(
            WorkItem.id,
            WorkItem.payload,
            WorkItem.creator_id,
            WorkItem.attempts,
            WorkItem.dedupe_key,
        )
        .execution_options(synchronize_session=False)
    )
    claimed = [
        Claimed(
            id=row.id,
            kind=kind.name,
            payload=row.payload,
            creator_id=row.creator_id,
            attempt=row.attempts,
            max_attempts=kind.max_attempts,
            dedupe_key=row.dedupe_key,
        )
        for row in rows
    ]
    claimed.sort(key=lambda item: item.id)
    return claimed


def _error_text(error: BaseException) -> str:
    if isinstance(error, Retry | GiveUp):
        return error.error[:_MAX_ERROR_LENGTH]
    return f"{type(error).__name__}: {error}"[:_MAX_ERROR_LENGTH]


def _ours(item: Claimed) -> Any:
    """Still this worker's claim: running with the attempt count it claimed (a worker
    whose lease ran out and was claimed again must not settle the new claim)."""
    return and_(
        WorkItem.id == item.id, WorkItem.state == RUNNING, WorkItem.attempts == item.attempt
    )


def _is_schedule(kind: Kind[Any], item: Claimed) -> bool:
    """Whether ``item`` is the one item that keeps periodic ``kind`` running (its dedupe
    key is the kind's name: ``ensure_periodic``)."""
    return kind.every is not None and item.dedupe_key == kind.name


async def settle(
    session: AsyncSession,
    *,
    kind: Kind[Any],
    outcomes: Mapping[str, BaseException | None],
    items: Sequence[Claimed],
    now: datetime,
    jitter: float,
    draw: Callable[[], float] = random.random,
) -> None:
    """Record what the handler did with each claimed item: delete the finished ones (a
    periodic kind's schedule is due again ``every`` later; an extra run of it from
    ``run_soon`` is deleted), schedule a retry for the failed ones, and mark dead those
    out of attempts or given up on."""
    finished = [item for item in items if outcomes.get(item.id) is None]
    repeating = [item for item in finished if _is_schedule(kind, item)]
    done = [item for item in finished if not _is_schedule(kind, item)]
    if done:
        await session.execute(
            delete(WorkItem).where(
                WorkItem.id.in_([item.id for item in done]),
                WorkItem.state == RUNNING,
                WorkItem.attempts.in_({item.attempt for item in done}),
            )
        )
    if repeating:
        assert kind.every is not None
        for item in repeating:
            await session.execute(
                update(WorkItem)
                .where(_ours(item))
                .values(
                    state=PENDING,
                    due_at=now + kind.every,
                    attempts=0,
                    last_error=None,
                    updated_at=now,
                )
            )
    for item in items:
        error = outcomes.get(item.id)
        if error is None:
            continue
        due_at: datetime | None = None
        fresh = isinstance(error, Retry) and error.fresh
        # A periodic kind's schedule is never given up for failing (only by GiveUp): the
        # sweeps it drives (expiry, settlement) must outlive an outage. It is retried by
        # its policy, and at the latest at its next period.
        schedule = _is_schedule(kind, item)
        if not isinstance(error, GiveUp) and (fresh or schedule or not item.is_last_attempt):
            if isinstance(error, Retry) and error.at is not None:
                due_at = error.at
            else:
                delay = error.delay if isinstance(error, Retry) else None
                delay = delay or kind.retry.delay(item.attempt)
                if delay is not None:
                    due_at = now + jittered(delay, jitter=jitter, draw=draw)
            if schedule:
                assert kind.every is not None
                next_period = now + kind.every
                due_at = next_period if due_at is None else min(due_at, next_period)
        values: dict[str, Any] = {"last_error": _error_text(error), "updated_at": now}
        if due_at is None:
            values["state"] = DEAD
            log.error("work %s (%s) is dead: %s", item.id, kind.name, values["last_error"])
        else:
            values["state"] = PENDING
            values["due_at"] = due_at
            if fresh:
                values["attempts"] = 0
        await session.execute(update(WorkItem).where(_ours(item)).values(**values))


async def run_due(
    database: Database,
    kinds: Sequence[Kind[ResourcesT_contra]],
    context: Context[ResourcesT_contra],
    *,
    now: datetime,
) -> int:
    """Claim, run and settle every item of ``kinds`` due at ``now``, batch after batch,
    until none is due; returns how many ran. For a caller that drives time itself (a
    billing test clock runs its own kinds at the clock's time); the worker runs the
    real-time kinds with its own loop. A failed item's retry is due after ``now``, so it
    waits for a later call."""
    total = 0
    while True:
        ran = 0
        for kind in kinds:
            async with database.unit_of_work() as session:
                items = await claim(session, kind=kind, now=now)
            if not items:
                continue
            try:
                outcomes = await kind.run(context, items)
            except Exception as error:  # a batch handler that failed as a whole
                log.exception("work of kind %s failed", kind.name)
                outcomes = {item.id: error for item in items}
            async with database.unit_of_work() as session:
                await settle(
                    session,
                    kind=kind,
                    outcomes=outcomes,
                    items=items,
                    now=now,
                    jitter=context.jitter,
                    draw=context.draw,
                )
            ran += len(items)
        if ran == 0:
            return total
        total += ran


async def due_kinds(session: AsyncSession, *, kinds: Sequence[str], now: datetime) -> set[str]:
    """Which of ``kinds`` have work due now: one query, so a pass claims only those."""
    rows = await session.execute(
        select(WorkItem.kind)
        .where(WorkItem.kind.in_(kinds), WorkItem.state.in_(LIVE_STATES), WorkItem.due_at <= now)
        .distinct()
    )
    return set(rows.scalars())


async def next_due(session: AsyncSession, *, kinds: Sequence[str]) -> datetime | None:
    """When the earliest live item of ``kinds`` is due (or its lease ends)."""
    return (
        await session.execute(
            select(func.min(WorkItem.due_at)).where(
                WorkItem.kind.in_(kinds), WorkItem.state.in_(LIVE_STATES)
            )
        )
    ).scalar_one_or_none()


# Seeing and reviving work (the CLI) ----------------------------------------------------


class WorkNotFound(LookupError):
    pass


class WorkNotDead(ValueError):
    pass


async def list_work(
    session: AsyncSession,
    *,
    now: datetime,
    states: Sequence[str] = STATES,
    kind: str | None = None,
    limit: int = 100,
) -> list[WorkItem]:
    """Items in ``states`` (``pending`` ones only once due), oldest due first."""
    due_or_other = (WorkItem.state != PENDING) | (WorkItem.due_at <= now)
    statement = select(WorkItem).where(WorkItem.state.in_(states), due_or_other)
    if kind is not None:
        statement = statement.where(WorkItem.kind == kind)
    statement = statement.order_by(WorkItem.due_at, WorkItem.id).limit(limit)
    return list((await session.execute(statement)).scalars())


async def retry(session: AsyncSession, *, work_id: str, now: datetime) -> WorkItem:
    """Put a dead item back: pending, due now, attempts from zero (its last error stays
    until it runs).

    Raises:
        WorkNotFound: no such item.
        WorkNotDead: the item is not dead, or a live item with its dedupe key exists.
    """
    item = await session.get(WorkItem, work_id, with_for_update=True)
    if item is None:
        raise WorkNotFound(f"no work item {work_id!r}")
    if item.state != DEAD:
        raise WorkNotDead(f"{work_id} is {item.state}, not dead")
    if item.dedupe_key is not None:
        live = await session.execute(
            select(WorkItem.id).where(
                WorkItem.dedupe_key == item.dedupe_key, WorkItem.state.in_(LIVE_STATES)
            )
        )
        if (other := live.scalar_one_or_none()) is not None:
            raise WorkNotDead(f"{other} does the same work ({item.dedupe_key}) already")
    item.state, item.due_at, item.attempts, item.updated_at = PENDING, now, 0, now
    await session.flush()
    wake_after_commit(session)
    return item


# Waking workers -----------------------------------------------------------------------


def wake_after_commit(session: AsyncSession, *, kinds: Iterable[str] | None = None) -> None:
    """Wake the workers once this transaction commits (nothing happens on a rollback),
    unless the transaction is a worker's own (``without_wake``). With ``kinds``, only the
    waiters for those kinds wake in this process (a lane sleeps through other work)."""
    info = session.sync_session.info
    if info.get(_QUIET):
        return
    info[_WAKE] = True
    if kinds is None:
        info[_WAKE_ALL] = True
    else:
        info.setdefault(_WAKE_KINDS, set()).update(kinds)


def without_wake(session: AsyncSession) -> None:
    """This transaction wakes no worker: it is a worker's own, and the work it enqueues
    is found by that worker's next look, due in the same pass (a NOTIFY and a wake-up
    would only bring the worker round for an empty pass)."""
    session.sync_session.info[_QUIET] = True


class Wakeup:
    """An in-process signal a worker sleeps on; ``ring`` sets it from any thread.
    ``kinds``: the kinds it waits for (None: any), so a commit that enqueued other work
    does not wake it."""

    _listening: set[Wakeup] = set()

    def __init__(self, kinds: Iterable[str] | None = None) -> None:
        self._event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.kinds = None if kinds is None else frozenset(kinds)

    def __enter__(self) -> Wakeup:
        Wakeup._listening.add(self)
        return self

    def __exit__(self, *_: object) -> None:
        Wakeup._listening.discard(self)

    def ring(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, seconds: float) -> bool:
        """Sleep until rung or ``seconds`` pass; True when rung."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout=max(0.0, seconds))
        except TimeoutError:
            return False
        finally:
            self._event.clear()
        return True

    @classmethod
    def ring_all(cls) -> None:
        for waiter in list(cls._listening):
            waiter.ring()

    @classmethod
    def ring_for(cls, kinds: set[str] | None) -> None:
        """Ring the waiters for any of ``kinds`` (None: every waiter)."""
        for waiter in list(cls._listening):
            if kinds is None or waiter.kinds is None or waiter.kinds & kinds:
                waiter.ring()


# This process's mark on its notifications: (pid, random token), made anew in a forked
# child (the pid differs), so two processes never share one.
_sender: tuple[int, str] = (0, "")
_ALL_KINDS = "*"


def _process_token() -> str:
    global _sender
    pid = os.getpid()
    if _sender[0] != pid:
        _sender = (pid, secrets.token_hex(8))
    return _sender[1]


def notify_payload(kinds: Iterable[str] | None) -> str:
    """The payload of a work notification: ``<process token> <kinds>``, the kinds comma
    separated, ``*`` for every kind, nothing for the outbox alone (the main loop)."""
    named = _ALL_KINDS if kinds is None else ",".join(sorted(kinds))
    return f"{_process_token()} {named}"


@dataclass(frozen=True, slots=True)
class Notification:
    """A work notification as a listener reads it (``read_notification``)."""

    from_this_process: bool
    # The kinds enqueued (None: any kind, or a sender that did not say).
    kinds: frozenset[str] | None


def read_notification(payload: str) -> Notification:
    """Read a notification's payload (``notify_payload``); one without this form (a bare
    ``NOTIFY``, an older process) means any kind, from elsewhere."""
    token, space, named = payload.partition(" ")
    if not token or not space:
        return Notification(from_this_process=False, kinds=None)
    kinds = None if named == _ALL_KINDS else frozenset(filter(None, named.split(",")))
    return Notification(from_this_process=token == _process_token(), kinds=kinds)


class EveryKindHere:
    """While a worker that runs every kind runs in this process (``stallholder serve``'s
    embedded worker), work this process enqueues is this worker's to find: its commit
    rings the worker here (``Wakeup``), so it sends no ``NOTIFY``, a round trip in every
    such transaction (one per sale). A worker in another process still finds the work,
    by its next look (at most ``WAKE_HORIZON``); work enqueued by processes without such
    a worker (``serve --workers N``, the CLI) still notifies. A context manager the
    worker's ``run`` holds; they nest."""

    _running = 0

    def __enter__(self) -> EveryKindHere:
        EveryKindHere._running += 1
        return self

    def __exit__(self, *_: object) -> None:
        EveryKindHere._running -= 1

    @classmethod
    def is_running(cls) -> bool:
        return cls._running > 0


@event.listens_for(Session, "before_commit")
def _notify_other_processes(session: Session) -> None:
    if EveryKindHere.is_running():
        return
    if session.info.get(_WAKE) and session.get_bind().dialect.name == "postgresql":
        kinds = None if session.info.get(_WAKE_ALL) else session.info.get(_WAKE_KINDS, set())
        session.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": NOTIFY_CHANNEL, "payload": notify_payload(kinds)},
        )


@event.listens_for(Session, "after_commit")
def _wake_this_process(session: Session) -> None:
    if not commits_whole_transaction(session):
        return  # a savepoint's release: the work is not there for others until the commit
    session.info.pop(_QUIET, None)
    every = session.info.pop(_WAKE_ALL, False)
    kinds = session.info.pop(_WAKE_KINDS, set())
    if session.info.pop(_WAKE, False):
        Wakeup.ring_for(None if every else kinds)


@event.listens_for(Session, "after_transaction_end")
def _forget_wake(session: Session, transaction: SessionTransaction) -> None:
    if not is_whole_transaction(transaction):
        return  # a savepoint's or a failed flush's: work enqueued before it still wakes
    session.info.pop(_WAKE, None)
    session.info.pop(_WAKE_ALL, None)
    session.info.pop(_WAKE_KINDS, None)
    session.info.pop(_QUIET, None)
