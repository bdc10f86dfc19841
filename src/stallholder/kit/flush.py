"""A flush in one statement on PostgreSQL (ADR 0030).

``flush_together`` writes what a session's flush would — new rows and updated columns of
loaded rows — as data-modifying CTEs of one statement, where each part is plain: a new row
with every column set (or a scalar default) and no relationship to sync, an update of
columns only. PostgreSQL runs each CTE exactly once and checks foreign keys at the end of
the statement. The rows are then handed to the session as written: new objects become
persistent as if loaded, updated attributes committed. Anything else (deletes, generated
keys, relationship changes, inheritance, SQLite) is an ordinary ``session.flush()``.

The parts of one statement see the same snapshot and run in no set order, where the ORM
would order them by their dependencies; foreign keys do not care (they are checked at the
end), but a unique value moved from one row to another in the same flush would collide.
Call it where the flush is known to be plain (a confirm's steps 1 and 3).
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import Column, Table, bindparam, inspect, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.sql.elements import TextClause

# (table, insert | update, the columns written, the key columns of an update)
_Part = tuple[Table, str, tuple[str, ...], tuple[str, ...]]


class _NotPlain(Exception):
    """This flush has a part the one statement does not write."""


@functools.cache
def _statement(parts: tuple[_Part, ...]) -> TextClause:
    """The statement for one shape of flush, built once: ``w<n>`` CTEs, then a count of
    the rows each update matched."""
    ctes: list[str] = []
    binds = []
    counted: list[str] = []
    for n, (table, verb, columns, keys) in enumerate(parts):
        for column in (*columns, *keys):
            binds.append(bindparam(f"p{n}_{column}", type_=table.c[column].type))
        if verb == "insert":
            names = ", ".join(f'"{column}"' for column in columns)
            values = ", ".join(f":p{n}_{column}" for column in columns)
            insert = f'INSERT INTO "{table.name}" ({names}) VALUES ({values})'  # noqa: S608
            ctes.append(f"w{n} AS ({insert})")
        else:
            assignments = ", ".join(f'"{column}" = :p{n}_{column}' for column in columns)
            where = " AND ".join(f'"{key}" = :p{n}_{key}' for key in keys)
            update = f'UPDATE "{table.name}" SET {assignments} WHERE {where}'  # noqa: S608
            ctes.append(f"w{n} AS ({update} RETURNING 1)")
            counted.append(f"(SELECT count(*) FROM w{n}) AS w{n}")  # noqa: S608
    # Only names from the tables' metadata and numbered parameters go into the text.
    return text(f"WITH {', '.join(ctes)} SELECT {', '.join(counted) or '0 AS nothing'}").bindparams(
        *binds
    )


def _table_of(row: object) -> Table:
    mapper = inspect(row).mapper
    table = mapper.local_table
    if mapper.inherits is not None or not isinstance(table, Table):
        raise _NotPlain
    return table


def _insert(row: object) -> tuple[Table, dict[str, Any], dict[str, Any]]:
    """A new row's values by column, and the defaults applied to it by attribute."""
    state = inspect(row)
    mapper = state.mapper
    table = _table_of(row)
    for relationship in mapper.relationships:
        if state.attrs[relationship.key].history.has_changes():
            raise _NotPlain
    values: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for column in table.columns:
        key = mapper.get_property_by_column(column).key
        if key in state.dict:
            values[column.name] = state.dict[key]
        elif isinstance(column, Column) and column.default is not None:
            if not column.default.is_scalar:
                raise _NotPlain
            values[column.name] = defaults[key] = column.default.arg  # type: ignore[attr-defined]
        elif column.server_default is None and not (
            column.primary_key and column.autoincrement is True
        ):
            # What the ORM would leave out, for the database to fill with NULL.
            values[column.name] = defaults[key] = None
        else:  # a generated key, a server default: the database would choose it
            raise _NotPlain
    return table, values, defaults


def _update(row: object) -> tuple[Table, dict[str, Any], dict[str, Any]]:
    """An updated row's changed values by column, and its key by column."""
    state = inspect(row)
    mapper = state.mapper
    table = _table_of(row)
    changed: dict[str, Any] = {}
    for attribute in state.attrs:
        history = attribute.history
        if not history.has_changes():
            continue
        prop = mapper.get_property(attribute.key)
        columns = getattr(prop, "columns", None)
        if columns is None or len(columns) != 1 or columns[0].table is not table:
            raise _NotPlain  # a relationship, or a column of another table
        if not history.added:
            raise _NotPlain
        changed[columns[0].name] = history.added[0]
    if not changed or any(column.name in changed for column in table.primary_key):
        raise _NotPlain
    key = {
        column.name: value
        for column, value in zip(
            table.primary_key.columns, mapper.primary_key_from_instance(row), strict=True
        )
    }
    return table, changed, key


async def flush_together(session: AsyncSession) -> None:
    """``session.flush()``, in one statement where it can be (the module's docstring).

    Raises:
        StaleDataError: an update matched no row (as the ORM's flush would).
    """
    sync = session.sync_session
    dirty = [row for row in sync.dirty if sync.is_modified(row)]
    new = list(sync.new)
    if session.get_bind().dialect.name != "postgresql" or sync.deleted or len(new) + len(dirty) < 2:
        await session.flush()
        return
    try:
        inserts = [_insert(row) for row in new]
        updates = [_update(row) for row in dirty]
    except _NotPlain:
        await session.flush()
        return
    parts: list[_Part] = []
    params: dict[str, Any] = {}
    for table, values, _defaults in inserts:
        params |= {f"p{len(parts)}_{column}": value for column, value in values.items()}
        parts.append((table, "insert", tuple(values), ()))
    for table, changed, where in updates:
        params |= {f"p{len(parts)}_{column}": value for column, value in changed.items()}
        params |= {f"p{len(parts)}_{column}": value for column, value in where.items()}
        parts.append((table, "update", tuple(changed), tuple(where)))
    with sync.no_autoflush:  # the statement is this flush
        counts = (await session.execute(_statement(tuple(parts)), params)).one()
    if any(count != 1 for count in counts[: len(updates)]):
        await session.rollback()  # as a failed flush leaves the transaction
        raise StaleDataError(f"an update of this flush matched {list(counts)} rows, not 1 each")
    for row, (_table, _values, defaults) in zip(new, inserts, strict=True):
        for key, value in defaults.items():
            set_committed_value(row, key, value)
        sync.expunge(row)
        make_transient_to_detached(row)
        sync.add(row)
    for row in dirty:
        state = inspect(row)
        for attribute in state.attrs:
            if attribute.history.has_changes():
                set_committed_value(row, attribute.key, attribute.history.added[0])
