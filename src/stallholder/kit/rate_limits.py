"""Fixed-window rate limits shared by every server process (ADR 0018).

A limit is a key (``ip:203.0.113.7``, ``buyer:jane@gmail.com``) allowed ``limit`` hits per
window of ``window`` seconds; windows are aligned to the Unix epoch, so every process
agrees where one ends. ``hit`` counts one hit on each key and raises ``RateLimited`` when
any is over its limit, with the seconds until its window ends (``Retry-After``).

- **PostgreSQL** (``DatabaseRateLimiter``): every hit is ONE statement in its own
  transaction, an upsert of one row per key whose ``DO UPDATE`` restarts the count when
  the stored window is older::

      INSERT INTO rate_limit_counters (key, window_start, count)
      SELECT key, :window_start, 1 FROM unnest(:keys) AS key WHERE <only_if>
      ON CONFLICT (key) DO UPDATE SET
        count = CASE WHEN rate_limit_counters.window_start = excluded.window_start
                THEN rate_limit_counters.count + 1 ELSE 1 END,
        window_start = excluded.window_start
      RETURNING key, count

  It commits at once, so a request that then fails (a 409 ``out-of-stock``) still
  counts. It runs on a small connection pool of its own, so a request that counts while
  its own unit of work holds a connection (a checkout session learns from its price read
  that it is for a drop) never waits for the pool its unit of work came from: many
  requests each holding one connection and waiting for a second could exhaust it. The table
  is UNLOGGED (migration 0015): counters need not survive a crash, and a hit's commit
  then waits for no WAL flush. ``only_if`` (an SQL condition, such as "a price of this
  session is in a drop") limits only some requests without a statement of its own.
- **SQLite** (``MemoryRateLimiter``): counters in the process's memory, and ``only_if``
  evaluated by one read. SQLite serves from one machine, usually one process; with
  ``serve --workers N`` each process counts on its own, so the effective limit is N
  times the setting. Counting in the database there would add a write transaction, and
  SQLite's one write lock, to every limited request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import ColumnElement, String, bindparam, case, delete, func, literal, select, true
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.dml import ReturningInsert

from stallholder.kit.db import Base, Database, UTCDateTime, create_engine
from stallholder.kit.errors import DomainError
from stallholder.kit.work import Claimed, Context, Kind

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The longest window a setting may give (``drop_rate_limit_window_seconds``).
MAX_WINDOW_SECONDS = 86_400


class RateLimitCounter(Base):
    """Hits on one key in its current window (platform-wide: keys are IPs and buyers)."""

    __tablename__ = "rate_limit_counters"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(index=True)
    count: Mapped[int]


class RateLimited(DomainError):
    status = 429
    slug = "rate-limited"
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: int, **extensions: Any) -> None:
        super().__init__(detail, retry_after=retry_after, **extensions)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``limit`` hits on ``key`` per window. ``what`` names it in the problem."""

    key: str
    limit: int
    what: str


def window_start(now: datetime, *, window_seconds: int) -> datetime:
    """The start of the epoch-aligned window that holds ``now``."""
    elapsed = math.floor((now - _EPOCH).total_seconds())
    return _EPOCH + timedelta(seconds=elapsed - elapsed % window_seconds)


def retry_after(now: datetime, *, start: datetime, window_seconds: int) -> int:
    """Whole seconds until the window that began at ``start`` ends (at least 1)."""
    left = (start + timedelta(seconds=window_seconds) - now).total_seconds()
    return max(1, math.ceil(left))


def _verdict(
    limits: Sequence[Limit], counts: dict[str, int], *, start: datetime, now: datetime, window: int
) -> None:
    for limit in limits:
        count = counts.get(limit.key)
        if count is not None and count > limit.limit:
            wait = retry_after(now, start=start, window_seconds=window)
            raise RateLimited(
                f"too many requests {limit.what}: at most {limit.limit} per {window} s; "
                f"try again in {wait} s",
                retry_after=wait,
                limit=limit.limit,
                window_seconds=window,
            )


class RateLimiter(Protocol):
    async def aclose(self) -> None:
        """Close what the limiter holds (its connections); the app calls it at shutdown."""

    async def hit(
        self,
        limits: Sequence[Limit],
        *,
        now: datetime,
        only_if: ColumnElement[bool] | None = None,
    ) -> None:
        """Count one hit on every key of ``limits`` (when ``only_if`` holds; it is an SQL
        condition with no FROM of its own, such as an ``EXISTS``).

        Raises:
            RateLimited: a key is over its limit; ``Retry-After`` is when its window ends.
        """


def _count_statement(only_if: ColumnElement[bool] | None) -> ReturningInsert[str, int]:
    """The counting upsert of ``DatabaseRateLimiter.hit``. Bound parameters only (the keys
    as one array), so SQLAlchemy compiles it once and PostgreSQL can reuse its plan."""
    keys = func.unnest(bindparam("keys", type_=ARRAY(String(400)))).column_valued("key")
    source = select(keys, bindparam("window_start", type_=UTCDateTime()), literal(1)).where(
        true() if only_if is None else only_if
    )
    statement = pg_insert(RateLimitCounter).from_select(["key", "window_start", "count"], source)
    table = RateLimitCounter.__table__.c
    return statement.on_conflict_do_update(
        index_elements=[table.key],
        set_={
            "count": case(
                (table.window_start == statement.excluded.window_start, table.count + 1),
                else_=1,
            ),
            "window_start": statement.excluded.window_start,
        },
    ).returning(table.key, table.count)


# Built once: constructing it cost more CPU than running it (a request that counts
# against a drop's limits without a condition: the API's).
_COUNT_ALWAYS = _count_statement(None)


class DatabaseRateLimiter:
    """Counters in ``rate_limit_counters``, one statement per hit (PostgreSQL)."""

    # The limiter's own pool: a hit is one short statement. Up to ten connections, each
    # kept once opened (ADR 0031).
    POOL_SIZE = 10
    MAX_OVERFLOW = 0

    def __init__(self, database: Database, *, window_seconds: int) -> None:
        self.database = database
        self.window_seconds = window_seconds
        self._engine: AsyncEngine | None = None

    def _own_engine(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = create_engine(
                self.database.url, pool_size=self.POOL_SIZE, max_overflow=self.MAX_OVERFLOW
            )
        return self._engine

    async def aclose(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def hit(
        self,
        limits: Sequence[Limit],
        *,
        now: datetime,
        only_if: ColumnElement[bool] | None = None,
    ) -> None:
        limits = [limit for limit in limits if limit.limit > 0]
        if not limits:
            return
        start = window_start(now, window_seconds=self.window_seconds)
        upsert = _COUNT_ALWAYS if only_if is None else _count_statement(only_if)
        async with self.database.one_statement(self._own_engine()) as connection:
            result = await connection.execute(
                upsert,
                {"keys": sorted({limit.key for limit in limits}), "window_start": start},
            )
            counted = {str(key): int(count) for key, count in result}
        _verdict(limits, counted, start=start, now=now, window=self.window_seconds)


class MemoryRateLimiter:
    """Counters in this process's memory (SQLite); ``only_if`` costs one read."""

    def __init__(self, database: Database, *, window_seconds: int) -> None:
        self.database = database
        self.window_seconds = window_seconds
        self._counts: dict[str, tuple[datetime, int]] = {}

    async def aclose(self) -> None:
        return None

    async def hit(
        self,
        limits: Sequence[Limit],
        *,
        now: datetime,
        only_if: ColumnElement[bool] | None = None,
    ) -> None:
        limits = [limit for limit in limits if limit.limit > 0]
        if not limits:
            return
        if only_if is not None:
            async with self.database.read() as session:
                if not (await session.execute(select(only_if))).scalar_one():
                    return
        start = window_start(now, window_seconds=self.window_seconds)
        if len(self._counts) > 100_000:
            self._forget_before(start)
        counted: dict[str, int] = {}
        for key in {limit.key for limit in limits}:
            began, count = self._counts.get(key, (start, 0))
            count = count + 1 if began == start else 1
            self._counts[key] = (start, count)
            counted[key] = count
        _verdict(limits, counted, start=start, now=now, window=self.window_seconds)

    def _forget_before(self, start: datetime) -> None:
        self._counts = {key: seen for key, seen in self._counts.items() if seen[0] >= start}


def rate_limiter(database: Database, *, window_seconds: int) -> RateLimiter:
    """The limiter for the database: shared counters on PostgreSQL, in-process on SQLite."""
    if database.is_sqlite:
        return MemoryRateLimiter(database, window_seconds=window_seconds)
    return DatabaseRateLimiter(database, window_seconds=window_seconds)


async def prune(session: AsyncSession, *, now: datetime) -> int:
    """Delete counters whose window ended more than the longest window ago (a key seen
    again starts from 1 anyway). Returns how many."""
    result = await session.execute(
        delete(RateLimitCounter).where(
            RateLimitCounter.window_start < now - timedelta(seconds=MAX_WINDOW_SECONDS)
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def _prune(context: Context[object], item: Claimed) -> None:
    """The periodic ``kit.prune_rate_limits``."""
    async with context.database.unit_of_work() as session:
        await prune(session, now=context.clock.now())


PRUNE_RATE_LIMITS: Kind[object] = Kind(
    name="kit.prune_rate_limits", handler=_prune, every=timedelta(hours=1)
)
