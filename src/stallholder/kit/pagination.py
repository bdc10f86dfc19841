"""Cursor pagination: ``limit`` and ``starting_after``, answered with ``{data, has_more}``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.kit.errors import InvalidRequest

T = TypeVar("T")
MAX_LIMIT = 100
DEFAULT_LIMIT = 10


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    data: Sequence[T]
    has_more: bool


class InvalidCursor(InvalidRequest):
    slug = "invalid-cursor"
    title = "Invalid pagination cursor"


async def paginate(
    session: AsyncSession,
    statement: Select[Any],
    *,
    id_column: Any,
    limit: int,
    starting_after: str | None,
) -> Page[Any]:
    """One page of ``statement``'s rows, newest first.

    Ids sort in creation order (``kit.ids``), so the id alone orders the list; the cursor
    is the id of the last object the client saw, and must belong to the same list.
    """
    if starting_after is not None:
        cursor = await session.execute(
            statement.with_only_columns(id_column).where(id_column == starting_after)
        )
        if cursor.first() is None:
            raise InvalidCursor(f"starting_after {starting_after!r} is not an object in this list")
        statement = statement.where(id_column < starting_after)
    rows = (
        (await session.execute(statement.order_by(id_column.desc()).limit(limit + 1)))
        .scalars()
        .all()
    )
    return Page(data=rows[:limit], has_more=len(rows) > limit)
