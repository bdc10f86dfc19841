"""Engines, the declarative base and the unit of work.

One unit of work per request or job: it opens a transaction, services flush inside it,
and only the unit of work commits (ADR 0002).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from sqlalchemy import (
    BigInteger,
    DateTime,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    UniqueConstraint,
    event,
    select,
)
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Session, SessionTransaction, mapped_column
from sqlalchemy.types import TypeDecorator

from stallholder.kit.pools import FairQueuePool

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
        if value is None or value.tzinfo is UTC:
            return value  # PostgreSQL's connections talk UTC (``create_engine``)
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


_UNIQUE_VIOLATION = "23505"  # PostgreSQL's SQLSTATE for unique_violation
_SQLITE_UNIQUE_PREFIX = "UNIQUE constraint failed: "


def _sqlite_unique_name(table_name: str, columns: tuple[str, ...]) -> str | None:
    """The name the model gives the unique rule on ``columns`` of ``table_name``.

    SQLite names the columns, not the constraint, so the name comes from the metadata
    (every constraint is named by ``NAMING_CONVENTION``)."""
    table = Base.metadata.tables.get(table_name)
    if table is None:
        return None
    rules: list[UniqueConstraint | PrimaryKeyConstraint | Index] = [
        constraint
        for constraint in table.constraints
        if isinstance(constraint, UniqueConstraint | PrimaryKeyConstraint)
    ]
    rules += [index for index in table.indexes if index.unique]
    for rule in rules:
        if tuple(column.name for column in rule.columns) == columns:
            return str(rule.name)
    return None


def unique_violation(error: IntegrityError) -> str | None:
    """The name of the unique constraint ``error`` reports broken, on PostgreSQL or SQLite;
    None for any other integrity error (a foreign key, NOT NULL or check), which is a bug."""
    original = error.orig
    diagnostics = getattr(original, "diag", None)
    if diagnostics is not None:  # psycopg
        if getattr(original, "sqlstate", None) != _UNIQUE_VIOLATION:
            return None
        name = diagnostics.constraint_name
        return str(name) if name else None
    message = str(original)
    if not message.startswith(_SQLITE_UNIQUE_PREFIX):
        return None
    qualified = [part.strip() for part in message.removeprefix(_SQLITE_UNIQUE_PREFIX).split(",")]
    tables = {part.split(".", 1)[0] for part in qualified}
    if len(tables) != 1 or not all("." in part for part in qualified):
        return None
    return _sqlite_unique_name(tables.pop(), tuple(part.split(".", 1)[1] for part in qualified))


def is_unique_violation(error: IntegrityError, constraint: str) -> bool:
    """Whether ``error`` is the unique constraint named ``constraint`` refusing a row: the
    race an insert expects and turns into a typed ``Conflict``."""
    return unique_violation(error) == constraint


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


# The most connections an engine holds to PostgreSQL at once. A pool keeps every one it
# opened: one closed on its return (SQLAlchemy's overflow) cost PostgreSQL a new backend
# the next time the worker or a storm needed it (ADR 0031).
POOL_CONNECTIONS = 30


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
    # Every connection's session time zone is UTC, whatever the server's default: psycopg
    # then loads a timestamp with ``datetime.UTC`` itself, which ``UTCDateTime`` keeps as
    # it is, where a zone such as Etc/UTC cost a conversion of every timestamp read, twice
    # (docs/performance.md). No SQL here depends on the session's zone. A URL's own
    # ``options`` are kept.
    options = make_url(full).query.get("options")
    given = options if isinstance(options, str) else " ".join(options or ())
    connect_args = kwargs.setdefault("connect_args", {})
    connect_args.setdefault("options", f"{given} -c TimeZone=UTC".strip())
    # Up to POOL_CONNECTIONS connections, each kept once opened, served to waiting requests
    # in the order they came (ADR 0031).
    kwargs.setdefault("poolclass", FairQueuePool)
    kwargs.setdefault("pool_size", POOL_CONNECTIONS)
    kwargs.setdefault("max_overflow", 0)
    remember_long_statements()
    return create_async_engine(full, **kwargs)


# The longest statement, and the most parameters, whose conversion psycopg remembers.
LONG_STATEMENT_BYTES = 64 * 1024
MANY_PARAMETERS = 4096


def remember_long_statements() -> None:
    """Let psycopg remember how it converted a statement however long it is (up to
    ``LONG_STATEMENT_BYTES`` and ``MANY_PARAMETERS``).

    psycopg turns each statement's ``%(name)s`` placeholders into PostgreSQL's ``$n`` with
    a parse that it remembers (an LRU of 128) only for statements of at most 4,096 bytes
    and 50 parameters. A request's last writes are one statement (``kit.flush``, ADR 0030)
    of the same text every time, longer than that: parsing it again on every request
    cost a sale 3 to 23 % of its CPU (docs/performance.md, "The ninth round"). The limits
    are module constants of psycopg 3 that it reads on every statement;
    ``tests/unit/test_kit.py`` fails if a new psycopg drops them, so an upgrade cannot
    lose this quietly. Raising them only widens what the LRU may hold."""
    from psycopg import _queries  # only PostgreSQL needs psycopg loaded

    _queries.MAX_CACHED_STATEMENT_LENGTH = max(
        _queries.MAX_CACHED_STATEMENT_LENGTH, LONG_STATEMENT_BYTES
    )
    _queries.MAX_CACHED_STATEMENT_PARAMS = max(
        _queries.MAX_CACHED_STATEMENT_PARAMS, MANY_PARAMETERS
    )


# A unit of work's last statements, deferred by a service to just before the commit
# (``defer_until_commit``): the conditional update of a hot row (a drop item's stock) then
# holds its row lock only for that statement and the commit, not for the rest of the
# request (ADR 0024).
FinalStep = Callable[[AsyncSession], Awaitable[None]]
_FINAL_STEPS = "stallholder.final_steps"


def defer_until_commit(session: AsyncSession, step: FinalStep) -> None:
    """Run ``step`` as the last statements of ``session``'s unit of work, after everything
    else the request writes (its ``Idempotency-Key`` record too) and right before the
    commit. Steps run in the order they were deferred. One that raises rolls the unit of
    work back, and its error is the request's answer. Whoever commits runs them
    (``run_final_steps``): ``Database.unit_of_work`` and the idempotency middleware do; a
    commit with steps left raises rather than commit without them."""
    session.info.setdefault(_FINAL_STEPS, []).append(step)


async def run_final_steps(session: AsyncSession) -> None:
    """Run the steps deferred to the commit (``defer_until_commit``), in order."""
    steps: list[FinalStep] = session.info.pop(_FINAL_STEPS, None) or []
    for step in steps:
        await step(session)


@event.listens_for(Session, "before_commit")
def _refuse_commit_with_final_steps_left(session: Session) -> None:
    # Sent when a savepoint is released too, and the steps are then still to come. (A
    # transaction committed with a savepoint still open is not checked: its unit of work
    # closes every savepoint it opens and runs the steps before it commits.)
    if commits_whole_transaction(session) and session.info.get(_FINAL_STEPS):
        raise RuntimeError(
            "a unit of work committed with deferred final steps not run: call "
            "kit.db.run_final_steps before its commit"
        )


# What one transaction knows (``transaction_memo``): the rows it has locked
# (``lock_rows``), rows read ahead for it (``hold``), what a domain reads ahead of many
# steps (``payments.read_payees``). Forgotten when the transaction ends, as its locks are,
# and when it rolls back to a savepoint (a row read ahead may have been changed and
# expired there: read again, it costs a statement, where kept it would be a lazy load).
_TRANSACTION = "stallholder.transaction"
# What one transaction must still write before its commit (``transaction_duties``: the
# writes waiting for its next flush, the ledger's postings gathered for it). Kept when a
# savepoint is released; rolling back to a savepoint puts it back as it was when the
# savepoint began, as the database forgets only what was written since.
_DUTIES = "stallholder.duties"
_LOCKED = "locked_rows"
_HELD = "held_rows"
_Row = TypeVar("_Row", bound="Base")
# For each open savepoint (``begin_nested``), innermost last: the savepoint, and the
# transaction's duties and final steps as they were when it began (``_copied``).
_SAVEPOINTS = "stallholder.savepoints"
_Saved = tuple[dict[str, Any], list[FinalStep]]


def is_whole_transaction(transaction: SessionTransaction) -> bool:
    """Whether a transaction SQLAlchemy reports in an event (``after_transaction_end``) is
    the session's whole transaction: not a savepoint, nor the inner transaction of a
    flush, whose failure rolls back only to the nearest savepoint. Its end is reported
    however it ends (committed, rolled back, or closed after a failed flush), after
    ``after_commit``; a rollback's ``after_soft_rollback`` is not sent in every case."""
    return transaction.parent is None


def commits_whole_transaction(session: Session) -> bool:
    """In a ``before_commit`` or ``after_commit`` listener: whether the commit is the
    transaction's own, not a savepoint's release (SQLAlchemy sends both events for
    either)."""
    return session.get_nested_transaction() is None


def _copied(value: Any) -> Any:
    """``value`` with every dict, list, set and tuple in it copied, all the way down;
    anything else (a write, a named tuple) is the same object."""
    kind = type(value)
    if kind is dict:
        return {key: _copied(item) for key, item in value.items()}
    if kind is list or kind is set or kind is tuple:
        return kind(_copied(item) for item in value)
    return value


@event.listens_for(Session, "after_transaction_create")
def _remember_at_savepoint(session: Session, transaction: SessionTransaction) -> None:
    if not transaction.nested:
        return
    duties: dict[str, Any] = session.info.get(_DUTIES) or {}
    saved = (_copied(duties), list(session.info.get(_FINAL_STEPS) or []))
    session.info.setdefault(_SAVEPOINTS, []).append((transaction, saved))


def _end_savepoint(session: Session, transaction: SessionTransaction) -> _Saved | None:
    """Forget ``transaction``'s savepoint and any inside it; what was saved when it began
    (None when it is not known)."""
    savepoints: list[tuple[SessionTransaction, _Saved]] = session.info.get(_SAVEPOINTS, [])
    for n, (savepoint, saved) in enumerate(savepoints):
        if savepoint is transaction:
            del savepoints[n:]
            return saved
    return None


def _forget_all(session: Session) -> None:
    for key in (_FINAL_STEPS, _TRANSACTION, _DUTIES, _SAVEPOINTS):
        session.info.pop(key, None)


@event.listens_for(Session, "after_commit")
def _drop_released_savepoint(session: Session) -> None:
    # A savepoint's release (SQLAlchemy sends ``after_commit`` for it too): the
    # transaction goes on, and so does what it knows and must still write; only the
    # savepoint's snapshot goes. Forgetting all of it there lost the postings waiting for
    # the flush.
    released = session.get_nested_transaction()
    if released is not None:
        _end_savepoint(session, released)


@event.listens_for(Session, "after_transaction_end")
def _forget_at_the_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.nested:
        # A savepoint that ended without its release: rolled back to, or closed by its
        # context manager after a flush inside it failed (the flush rolled back to it;
        # no rollback event is sent for the savepoint itself then). The database is as
        # it was when it began, the locks taken since released: what the transaction
        # must still do is put back as it was then, and what it read ahead is read
        # again. Before, all of it was forgotten, the final steps and the writes waiting
        # for the flush from before the savepoint too.
        saved = _end_savepoint(session, transaction)
        if saved is not None:
            session.info.pop(_TRANSACTION, None)
            session.info[_DUTIES], session.info[_FINAL_STEPS] = saved
    elif is_whole_transaction(transaction):
        # Committed, rolled back or closed: sent last for each.
        _forget_all(session)
    # Else a flush's inner transaction: its savepoint's or the transaction's end follows.


def transaction_memo(session: AsyncSession) -> dict[str, Any]:
    """A place for what this transaction has read ahead or locked; empty again once the
    transaction commits or rolls back, or rolls back to a savepoint."""
    memo: dict[str, Any] = session.info.setdefault(_TRANSACTION, {})
    return memo


def transaction_duties(session: AsyncSession) -> dict[str, Any]:
    """A place for what this transaction must still write before it commits (writes
    waiting for its next flush); empty again once it commits or rolls back. A savepoint
    keeps it: rolling back to one puts it back as it was when the savepoint began. Keep
    only dicts, lists, sets and tuples of values and immutable objects here (that is what
    is copied when a savepoint begins)."""
    duties: dict[str, Any] = session.info.setdefault(_DUTIES, {})
    return duties


def hold(session: AsyncSession, rows: Iterable[object]) -> None:
    """Keep ``rows`` in the session's identity map until the transaction ends, so that
    ``session.get`` of one of them costs no statement. The identity map holds rows only
    weakly: a row no variable refers to any more is forgotten and read again. A batch
    reads what its steps will ask for in one statement per table, and each step then
    finds it in memory."""
    transaction_memo(session).setdefault(_HELD, []).extend(rows)


async def read_and_hold(session: AsyncSession, model: type[_Row], ids: Iterable[str]) -> None:
    """Read the rows of ``model`` with these primary keys in one statement and ``hold``
    them for the rest of the transaction (no lock: see ``lock_rows`` for that)."""
    wanted = sorted(set(ids))
    if not wanted:
        return
    key = model.__mapper__.primary_key[0]
    hold(session, (await session.execute(select(model).where(key.in_(wanted)))).scalars().all())


async def lock_rows(
    session: AsyncSession, model: type[_Row], ids: Iterable[str]
) -> dict[str, _Row]:
    """Lock the rows of ``model`` with these primary keys (``SELECT … FOR UPDATE``, in key
    order, read afresh), remember them as locked by this transaction, and return them by
    key (a missing one is absent). ``locked_row`` then returns one of them with no
    statement. On SQLite the unit of work holds the database's one write lock already."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    key = model.__mapper__.primary_key[0]
    rows = (
        (
            await session.execute(
                select(model)
                .where(key.in_(wanted))
                .order_by(key)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        )
        .scalars()
        .all()
    )
    locked: dict[tuple[type[Base], Any], Base] = transaction_memo(session).setdefault(_LOCKED, {})
    found: dict[str, _Row] = {}
    for row in rows:
        identity = model.__mapper__.primary_key_from_instance(row)[0]
        locked[(model, identity)] = row
        found[identity] = row
    return found


async def locked_row(session: AsyncSession, model: type[_Row], id: str) -> _Row | None:
    """The row of ``model`` with primary key ``id``, locked for this transaction: the one
    ``lock_rows`` locked already (no statement; this transaction's own changes are on it),
    else locked and read now. None when there is no such row."""
    locked: dict[tuple[type[Base], Any], Base] = transaction_memo(session).get(_LOCKED, {})
    row = locked.get((model, id))
    if row is not None:
        return row  # type: ignore[return-value]
    return (await lock_rows(session, model, [id])).get(id)


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
        """One transaction: commits when the block ends (after its deferred final steps,
        ``defer_until_commit``), rolls back if it raises."""
        async with self.sessionmaker() as session, session.begin():
            yield session
            await run_final_steps(session)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A short transaction for reading only, such as authenticating the caller.

        On SQLite it begins ``DEFERRED``, so it takes no write lock and does not wait for a
        writer; on PostgreSQL it is an ordinary transaction. Nothing written in it is meant
        to be kept: write in a unit of work.
        """
        async with self._read_sessionmaker() as session, session.begin():
            yield session

    @asynccontextmanager
    async def one_statement(
        self, engine: AsyncEngine | None = None
    ) -> AsyncIterator[AsyncConnection]:
        """A connection for one write that needs no transaction around it (an upsert that
        stands alone). On PostgreSQL it runs in autocommit: no ``BEGIN`` and ``COMMIT``,
        two round trips fewer; the statement is atomic by itself. On SQLite it is a
        transaction as every write is (``BEGIN IMMEDIATE``: one writer at a time).
        ``engine``: another engine on this database (a pool of its own)."""
        engine = self.engine if engine is None else engine
        if self.is_sqlite:
            async with engine.begin() as connection:
                yield connection
            return
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            yield connection

    async def dispose(self) -> None:
        await self.engine.dispose()


@asynccontextmanager
async def session_or_unit_of_work(
    database: Database, session: AsyncSession | None
) -> AsyncIterator[AsyncSession]:
    """``session`` when the caller passes one (the caller's unit of work commits), or a
    unit of work of its own. Multi-step use cases (a charge: record, call the gateway,
    record the outcome) take their last step on the request's session this way."""
    if session is not None:
        yield session
        return
    async with database.unit_of_work() as own:
        yield own
