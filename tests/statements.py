"""Counting what a block of code sends to the database, for tests that pin a hot path's
statements (a sale, a renewal batch, a ledger posting)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from stallholder.kit.db import Database


@contextmanager
def statements(database: Database, *, as_: Callable[[str], str] = str) -> Iterator[list[str]]:
    """Every statement sent to the database inside the block (SQLite's ``BEGIN`` too),
    each as ``as_`` gives it (``shape``, or the SQL itself)."""
    sent: list[str] = []

    def record(*args: Any) -> None:
        sent.append(as_(str(args[2])))

    event.listen(database.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(database.engine.sync_engine, "before_cursor_execute", record)


def shape(statement: str) -> str:
    """A statement as its verb and table: ``SELECT checkout_sessions``, ``INSERT orders``,
    ``WITH posted_transaction`` (a CTE's name), ``BEGIN``."""
    words = statement.split()
    if words[0] == "SELECT":
        first = words[2] if words[1] == "DISTINCT" else words[1]
        return "SELECT " + first.split(".")[0].split("(")[0]
    if words[0] == "INSERT":
        return "INSERT " + words[2]
    if words[0] in ("UPDATE", "WITH"):
        return f"{words[0]} {words[1]}"
    return words[0]
