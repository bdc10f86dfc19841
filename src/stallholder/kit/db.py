"""Engines, the declarative base and the unit of work.

One unit of work per request or job: it opens a transaction, services flush inside it,
and only the unit of work commits (ADR 0002).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from sqlalchemy import BigInteger, DateTime, Integer, MetaData, event
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, on SQLite and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# A surrogate integer key: BIGINT on PostgreSQL, INTEGER (the rowid alias that
# autoincrements) on SQLite.
SerialPK = Annotated[
    int,
    mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    ),
]


class Base(DeclarativeBase):
    """Base of every table. Money columns are BigInteger minor units (ADR 0001)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), int: BigInteger()}


def async_url(url: str) -> str:
    """Turn a plain ``sqlite:///`` or ``postgresql://`` URL into one with an async driver."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a database URL: {url!r}")
    base = scheme.split("+", 1)[0]
    if base == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    if base in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    raise ValueError(f"unsupported database {base!r}: use sqlite:/// or postgresql://")


def sync_url(url: str) -> str:
    """The same database with a synchronous driver, for Alembic."""
    scheme, _, rest = async_url(url).partition("://")
    if scheme.startswith("sqlite"):
        return f"sqlite://{rest}"
    return f"{scheme}://{rest}"


def is_sqlite(url: str) -> bool:
    return async_url(url).startswith("sqlite")


# An execution option that marks a connection as used for reading only (``Database.read``).
READ_ONLY_OPTION = "stallholder_read_only"


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An engine for ``url``.

    On SQLite every unit of work starts with ``BEGIN IMMEDIATE``: there is exactly one
    writer at a time, so read-then-write sequences inside a unit of work cannot interleave
    (the embedded default's concurrency model, ADR 0003). A read (``Database.read``) starts
    with a plain ``BEGIN`` instead, so it never waits for or holds the write lock.
    """
    full = async_url(url)
    if full.startswith("sqlite"):
        engine = create_async_engine(full, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            if conn.get_execution_options().get(READ_ONLY_OPTION):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    return create_async_engine(full, **kwargs)


class Database:
    """The engine and a way to open units of work on it."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = create_engine(url, **engine_kwargs)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessionmaker = async_sessionmaker(
            self.engine.execution_options(**{READ_ONLY_OPTION: True}), expire_on_commit=False
        )

    @property
    def is_sqlite(self) -> bool:
        return is_sqlite(self.url)

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[AsyncSession]:
        """One transaction: commits when the block ends, rolls back if it raises."""
        async with self.sessionmaker() as session, session.begin():
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A short transaction for reading only, such as authenticating the caller.

        On SQLite it begins ``DEFERRED``, so it takes no write lock and does not wait for a
        writer; on PostgreSQL it is an ordinary transaction. Nothing written in it is meant
        to be kept: write in a unit of work.
        """
        async with self._read_sessionmaker() as session, session.begin():
            yield session

    async def dispose(self) -> None:
        await self.engine.dispose()
