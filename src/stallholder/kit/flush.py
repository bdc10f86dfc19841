"""A flush in one statement on PostgreSQL (ADR 0030).

``flush_together`` writes what a session's flush would — new rows and updated columns of
loaded rows — as data-modifying CTEs of one statement, where each part is plain: a new row
with every column set (or a scalar default, or a key the database generates, read back),
an update of columns only. New rows may be new children of a new row's one-to-many
relationship (a checkout session's line items): their foreign key is set from the parent,
as the ORM's flush would. PostgreSQL runs each CTE exactly once and checks foreign keys at
the end of the statement. The rows are then handed to the session as written: new objects
become persistent as if loaded, updated attributes committed. Rows that are not the ORM's
(``also``: the stored response of a request's ``Idempotency-Key``) may join the statement.
Anything else (deletes, other relationship changes, inheritance, server defaults, SQLite)
is an ordinary ``session.flush()``, with ``also`` inserted after it.

The parts of one statement see the same snapshot and run in no set order, where the ORM
would order them by their dependencies; foreign keys do not care (they are checked at the
end), but a unique value moved from one row to another in the same flush would collide.
Call it where the flush is known to be plain (a checkout session's creation, a confirm's
steps 1 and 3, a renewal batch, a charge batch's steps 1 and 3); ``flush_together_at_commit``
leaves the flush to the unit of work's commit, where the request's ``Idempotency-Key`` row
joins it. An integrity error of a row left to the commit surfaces there, not in the
service that added it: leave to the commit only rows whose constraints no client can break
(those a service maps to a typed 409 are flushed where it catches the error).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Insert, Integer, Table, bindparam, insert, inspect, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import RelationshipDirection, make_transient_to_detached
from sqlalchemy.orm.attributes import get_history, set_committed_value
from sqlalchemy.orm.base import PASSIVE_NO_INITIALIZE
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.sql.elements import TextClause

from stallholder.kit.db import defer_until_commit, transaction_duties

# (table, insert | update, the columns written, the key columns of an update or the
# generated key an insert reads back, how many rows), or (None, write, (its CTEs,), (), 1).
# Rows of one table with the same columns are one part: one multi-row CTE.
_Part = tuple[Table | None, str, tuple[str, ...], tuple[str, ...], int]
# A row that is not the ORM's, inserted with the flush: its table and values by column.
Extra = tuple[Table, Mapping[str, Any]]
# What a ``Write``'s SQL writes before the names of its CTEs and bind parameters.
PREFIX = "__w__"
_WRITES = "stallholder.writes_with_flush"


@dataclass(frozen=True, slots=True)
class Write:
    """A write of SQL text whose result nothing reads (a ledger posting), sent with the
    next ``flush_together`` as CTEs of its statement (``write_with_flush``).

    ``ctes`` are CTE definitions (``name AS (INSERT …), …``) with ``PREFIX`` before each
    CTE's name and each bind parameter's (``:__w__amount``); ``params`` are bound by name
    without it. ``alone`` is the same write as a statement of its own, with those params,
    for when it is not sent with a flush."""

    ctes: str
    params: Mapping[str, Any]
    alone: TextClause


def write_with_flush(session: AsyncSession, write: Write) -> None:
    """Send ``write`` with this unit of work's next ``flush_together`` (at the latest its
    commit's: it is deferred there too). Only for a write nothing in the transaction
    reads before the commit, and that touches no row another pending write touches (two
    parts of one statement may not change the same row): ``send_writes`` sends those
    waiting first, or ``replace_write`` puts one write in the place of another that it
    includes (the ledger's postings gathered into one)."""
    # The transaction's: a rollback forgets it (a session used again after one, as the
    # idempotency middleware's is to store a problem, never sends it).
    pending: list[Write] = transaction_duties(session).setdefault(_WRITES, [])
    if not pending:
        defer_until_commit(session, flush_together)
    pending.append(write)


def replace_write(session: AsyncSession, old: Write, new: Write) -> bool:
    """Put ``new`` in the place of ``old`` among the writes waiting for the next
    ``flush_together`` (a write that grew: the ledger's postings gathered into one).
    False, with nothing changed, when ``old`` is not waiting (it was sent meanwhile)."""
    pending: list[Write] = transaction_duties(session).get(_WRITES) or []
    for n, write in enumerate(pending):
        if write is old:
            pending[n] = new
            return True
    return False


async def send_writes(session: AsyncSession) -> None:
    """Send the pending writes now, each a statement of its own."""
    for write in transaction_duties(session).pop(_WRITES, None) or []:
        await session.execute(write.alone, dict(write.params))


class _NotPlain(Exception):
    """This flush has a part the one statement does not write."""


@functools.lru_cache(maxsize=1024)
def _statement(parts: tuple[_Part, ...]) -> TextClause:
    """The statement for one shape of flush, built once: ``w<n>`` CTEs, then, in part
    order, the count of the rows each update matched and the keys each insert generated
    (an array, in the order of its rows)."""
    ctes: list[str] = []
    binds = []
    returned: list[str] = []
    for n, (table, verb, columns, keys, rows) in enumerate(parts):
        if table is None:  # a ``Write``: its CTEs, its names made this part's
            ctes.append(columns[0].replace(PREFIX, f"w{n}_"))
            continue
        written = columns if verb == "insert" else (*columns, *keys)
        for row in range(rows):
            for column in written:
                binds.append(bindparam(f"p{n}_{row}_{column}", type_=table.c[column].type))
        names = ", ".join(f'"{column}"' for column in written)
        tuples = [", ".join(f":p{n}_{row}_{column}" for column in written) for row in range(rows)]
        if verb == "insert" and not keys:
            values = ", ".join(f"({one})" for one in tuples)
            ctes.append(f'w{n} AS (INSERT INTO "{table.name}" ({names}) VALUES {values})')  # noqa: S608
        elif verb == "insert":
            # The rows in the order given, so the keys the database generates for them
            # rise in that order (one sequence, one statement): sorted, they are the rows'.
            (generated,) = keys
            values = ", ".join(f"({one}, {row})" for row, one in enumerate(tuples))
            ctes.append(
                f'w{n} AS (INSERT INTO "{table.name}" ({names}) SELECT {names} FROM '  # noqa: S608
                f'(VALUES {values}) AS v({names}, "__row") ORDER BY "__row" '
                f'RETURNING "{generated}")'
            )
            returned.append(
                f'(SELECT array_agg("{generated}" ORDER BY "{generated}") FROM w{n}) AS w{n}'  # noqa: S608
            )
        elif rows == 1:
            assignments = ", ".join(f'"{column}" = :p{n}_0_{column}' for column in columns)
            where = " AND ".join(f'"{key}" = :p{n}_0_{key}' for key in keys)
            update = f'UPDATE "{table.name}" SET {assignments} WHERE {where}'  # noqa: S608
            ctes.append(f"w{n} AS ({update} RETURNING 1)")
            returned.append(f"(SELECT count(*) FROM w{n}) AS w{n}")  # noqa: S608
        else:
            assignments = ", ".join(f'"{column}" = v."{column}"' for column in columns)
            where = " AND ".join(f'"{table.name}"."{key}" = v."{key}"' for key in keys)
            values = ", ".join(f"({one})" for one in tuples)
            update = (
                f'UPDATE "{table.name}" SET {assignments} FROM (VALUES {values}) '  # noqa: S608
                f"AS v({names}) WHERE {where}"
            )
            ctes.append(f"w{n} AS ({update} RETURNING 1)")
            returned.append(f"(SELECT count(*) FROM w{n}) AS w{n}")  # noqa: S608
    # Only names from the tables' metadata and numbered parameters go into the text.
    return text(
        f"WITH {', '.join(ctes)} SELECT {', '.join(returned) or '0 AS nothing'}"
    ).bindparams(*binds)


def _table_of(row: object) -> Table:
    mapper = inspect(row).mapper
    table = mapper.local_table
    if mapper.inherits is not None or not isinstance(table, Table):
        raise _NotPlain
    return table


def _generated_key(table: Table) -> Column[Any] | None:
    """The table's key when the database generates it (a serial integer), else None."""
    (key, *more) = table.primary_key.columns
    if more or not isinstance(key.type, Integer) or key.autoincrement not in (True, "auto"):
        return None
    return key


def _adopt_children(row: object, new: set[int]) -> None:
    """Set the foreign keys of a new row's new children (its one-to-many relationships),
    as the ORM's flush would; any other relationship change is not plain."""
    state = inspect(row)
    for relationship in state.mapper.relationships:
        history = get_history(row, relationship.key, passive=PASSIVE_NO_INITIALIZE)
        if not history.has_changes():
            continue
        if (
            relationship.direction is not RelationshipDirection.ONETOMANY
            or relationship.secondary is not None
            or history.deleted
            or history.unchanged
            or any(id(child) not in new for child in history.added)
        ):
            raise _NotPlain
        for child in history.added:
            child_mapper = inspect(child).mapper
            for local, remote in relationship.local_remote_pairs:
                value = getattr(row, state.mapper.get_property_by_column(local).key)
                setattr(child, child_mapper.get_property_by_column(remote).key, value)


_NO_DEFAULT = object()


def _python_default(column: Column[Any]) -> Any:
    """The value the ORM's flush would give ``column`` when a new row leaves it unset: its
    scalar default, or its default function's result (one that takes no context). None
    when it has no default here; ``_NO_DEFAULT`` when only the database can say (a
    server default, a default that reads the statement's context)."""
    default = column.default
    if default is None:
        return None if column.server_default is None else _NO_DEFAULT
    if default.is_scalar:
        return default.arg  # type: ignore[attr-defined]
    if default.is_callable and default.arg is not default._fn:  # type: ignore[attr-defined]
        return default._fn()  # type: ignore[attr-defined]  # wrapped: takes no context
    return _NO_DEFAULT


def fill_defaults(rows: Iterable[object]) -> bool:
    """Give new ``rows`` the column defaults their insert would give them (keys the
    database generates aside), so they read as written before they are flushed (an
    event's payload). False, with nothing changed, when some default only the database
    knows is missing: flush instead."""
    filled: list[tuple[object, str, Any]] = []
    for row in rows:
        state = inspect(row)
        table = _table_of(row)
        generated = _generated_key(table)
        for column in table.columns:
            key = state.mapper.get_property_by_column(column).key
            if key in state.dict or column is generated:
                continue
            value = _python_default(column)
            if value is _NO_DEFAULT:
                return False
            filled.append((row, key, value))
    for row, key, value in filled:
        setattr(row, key, value)
    return True


def _insert(
    row: object,
) -> tuple[Table, dict[str, Any], dict[str, Any], tuple[str, str] | None]:
    """A new row's values by column, the defaults applied to it by attribute, and the
    attribute and column of the key the database generates for it (None when it has its
    key)."""
    state = inspect(row)
    mapper = state.mapper
    table = _table_of(row)
    generated = _generated_key(table)
    values: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    generated_attribute = None
    for column in table.columns:
        key = mapper.get_property_by_column(column).key
        if key in state.dict and not (column is generated and state.dict[key] is None):
            values[column.name] = state.dict[key]
        elif column is generated:
            generated_attribute = (key, column.name)
        elif column.primary_key and column.default is None:
            raise _NotPlain  # a key left unset that the database does not make
        else:
            # Its default, or NULL where the ORM would leave it out for the database.
            value = _python_default(column)
            if value is _NO_DEFAULT:
                raise _NotPlain  # the database would choose it
            values[column.name] = defaults[key] = value
    return table, values, defaults, generated_attribute


def _update(row: object) -> tuple[Table, dict[str, Any], dict[str, Any]] | None:
    """A changed row's changed values by column and its key by column; None when nothing
    it holds differs from what was loaded (a row set to the values it had).

    Only the attributes the session recorded as touched are read (the instance state's
    ``committed_state``, as the ORM's own flush does), not every attribute's history."""
    state = inspect(row)
    mapper = state.mapper
    changes: list[tuple[Any, Any]] = []
    for key in state.committed_state:
        history = get_history(row, key, passive=PASSIVE_NO_INITIALIZE)
        if not history.has_changes():
            continue
        if not history.added:
            raise _NotPlain
        changes.append((mapper.get_property(key), history.added[0]))
    if not changes:
        return None
    table = _table_of(row)
    changed: dict[str, Any] = {}
    for prop, value in changes:
        columns = getattr(prop, "columns", None)
        if columns is None or len(columns) != 1 or columns[0].table is not table:
            raise _NotPlain  # a relationship, or a column of another table
        changed[columns[0].name] = value
    if any(column.name in changed for column in table.primary_key):
        raise _NotPlain
    # In the table's order, not the order they were set: rows changed alike are one part.
    changed = {
        column.name: changed[column.name] for column in table.columns if column.name in changed
    }
    key = {
        column.name: value
        for column, value in zip(
            table.primary_key.columns, mapper.primary_key_from_instance(row), strict=True
        )
    }
    return table, changed, key


@functools.cache
def _insert_into(table: Table) -> Insert:
    return insert(table)


async def _flush_then_insert(session: AsyncSession, also: Sequence[Extra]) -> None:
    await session.flush()
    for table, values in also:
        await session.execute(_insert_into(table), dict(values))
    await send_writes(session)


async def flush_together(session: AsyncSession, *, also: Sequence[Extra] = ()) -> None:
    """``session.flush()`` and then an insert of each row of ``also``, in one statement
    where it can be (the module's docstring).

    Raises:
        StaleDataError: an update matched no row (as the ORM's flush would).
        IntegrityError: a row broke a constraint (the transaction must be rolled back).
    """
    sync = session.sync_session
    new = list(sync.new)
    writes: list[Write] = transaction_duties(session).get(_WRITES) or []
    if session.get_bind().dialect.name != "postgresql" or sync.deleted:
        await _flush_then_insert(session, also)
        return
    try:
        updates = [change for row in sync.dirty if (change := _update(row)) is not None]
    except _NotPlain:
        await _flush_then_insert(session, also)
        return
    if not (new or updates or also or writes):
        return  # nothing to write (a deferred flush the commit's record already wrote)
    if len(new) + len(updates) + len(also) + len(writes) < 2:
        await _flush_then_insert(session, also)
        return
    try:
        pending = {id(row) for row in new}
        for row in new:
            _adopt_children(row, pending)
        inserts = [_insert(row) for row in new]
    except _NotPlain:
        await _flush_then_insert(session, also)
        return
    parts: list[_Part] = []
    params: dict[str, Any] = {}
    # Each output of the statement, in part order: the rows an update part must match,
    # or the new rows (by index) whose keys an insert part generated.
    reads: list[tuple[int, list[int]]] = []
    # Rows of one table with the same columns, in the order first seen: one part each.
    inserted: dict[tuple[Table, tuple[str, ...]], list[int]] = {}
    for index, (table, values, _defaults, _generated) in enumerate(inserts):
        inserted.setdefault((table, tuple(values)), []).append(index)
    for (table, columns), indexes in inserted.items():
        n = len(parts)
        generated = inserts[indexes[0]][3]
        for row, index in enumerate(indexes):
            params |= {f"p{n}_{row}_{column}": value for column, value in inserts[index][1].items()}
        parts.append(
            (table, "insert", columns, () if generated is None else (generated[1],), len(indexes))
        )
        if generated is not None:
            reads.append((0, indexes))
    extras: dict[tuple[Table, tuple[str, ...]], list[Mapping[str, Any]]] = {}
    for table, extra in also:
        extras.setdefault((table, tuple(extra)), []).append(extra)
    for (table, columns), rows in extras.items():
        n = len(parts)
        for row, extra in enumerate(rows):
            params |= {f"p{n}_{row}_{column}": value for column, value in extra.items()}
        parts.append((table, "insert", columns, (), len(rows)))
    for write in writes:
        params |= {f"w{len(parts)}_{name}": value for name, value in write.params.items()}
        parts.append((None, "write", (write.ctes,), (), 1))
    changed_alike: dict[tuple[Table, tuple[str, ...], tuple[str, ...]], list[int]] = {}
    for index, (table, changed, where) in enumerate(updates):
        changed_alike.setdefault((table, tuple(changed), tuple(where)), []).append(index)
    for (table, columns, keys), indexes in changed_alike.items():
        n = len(parts)
        for row, index in enumerate(indexes):
            _table, changed, where = updates[index]
            params |= {f"p{n}_{row}_{column}": value for column, value in changed.items()}
            params |= {f"p{n}_{row}_{column}": value for column, value in where.items()}
        parts.append((table, "update", columns, keys, len(indexes)))
        reads.append((len(indexes), []))
    with sync.no_autoflush:  # the statement is this flush
        row = (await session.execute(_statement(tuple(parts)), params)).one()
    transaction_duties(session).pop(_WRITES, None)
    outputs = tuple(row) if reads else ()  # else the one ``nothing`` column
    stale = [
        (count, matched)
        for (count, _), matched in zip(reads, outputs, strict=True)
        if count and matched != count
    ]
    if stale:
        await session.rollback()  # as a failed flush leaves the transaction
        raise StaleDataError(f"updates of this flush matched {stale} rows (wanted, matched)")
    for (_, made), keys in zip(reads, outputs, strict=True):
        if not made:
            continue  # an update's count
        for index, value in zip(made, keys, strict=True):
            made_key = inserts[index][3]
            assert made_key is not None
            set_committed_value(new[index], made_key[0], value)
    for row, (_table, _values, defaults, _generated) in zip(new, inserts, strict=True):
        for key, value in defaults.items():
            set_committed_value(row, key, value)
        if row in sync:  # not yet expunged by its parent's cascade
            sync.expunge(row)
        make_transient_to_detached(row)
    for row in new:
        sync.add(row)
    # Every changed row is written now, and a row set to the values it had has nothing to
    # write: all of them are clean, as the ORM's flush leaves them. A row left marked
    # changed would make every later query's autoflush, and the commit, run the ORM's
    # flush over it again for nothing.
    for row in sync.dirty:
        state = inspect(row)
        state._commit_all(state.dict, sync.identity_map)


def flush_together_at_commit(session: AsyncSession) -> None:
    """Leave this unit of work's flush to its commit, in one statement there
    (``flush_together``): the idempotency middleware's stored response joins it, and
    ``Database.unit_of_work`` runs it as a final step. A statement run before the commit
    that needs the rows (any ORM query: autoflush) flushes them first, as usual."""
    defer_until_commit(session, flush_together)
