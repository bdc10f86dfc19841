"""Offers in line order, shared by raffles and waitlists: the next entry still waiting is
moved to ``offered`` by a conditional update of its status, and an offer that lapsed is
moved to ``passed`` the same way, so two callers (two workers, an expiry racing a
payment) never offer one entry twice or pass one offer twice.

A raffle's line is its draw order (``drop_entries.rank``); a waitlist's is signup order
(``waitlist_entries.id``, which sorts in creation order).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.inventory.models import DropEntry, WaitlistEntry

Line = type[DropEntry] | type[WaitlistEntry]


async def take_next(
    session: AsyncSession,
    line: Line,
    *,
    where: Sequence[ColumnElement[bool]],
    order_by: Sequence[Any],
    waiting: str,
    values: dict[str, Any],
    returning: Sequence[Any],
) -> Row[Any] | None:
    """Move the first entry of ``line`` in ``order_by`` that matches ``where`` and is
    ``waiting`` to ``values`` (its new status among them). An entry a concurrent caller
    moved first is skipped. Returns the moved entry's ``returning`` columns, or None when
    nobody is waiting."""
    while True:
        candidate = (
            await session.execute(
                select(line.id).where(*where, line.status == waiting).order_by(*order_by).limit(1)
            )
        ).scalar_one_or_none()
        if candidate is None:
            return None
        moved = (
            await session.execute(
                update(line)
                .where(line.id == candidate, line.status == waiting)
                .values(**values)
                .returning(*returning)
                .execution_options(synchronize_session=False)
            )
        ).one_or_none()
        if moved is not None:
            return moved


async def lapse(
    session: AsyncSession, line: Line, *, where: Sequence[ColumnElement[bool]], now: datetime
) -> str | None:
    """Pass the ``offered`` entry matching ``where`` (its time ran out unused). Returns
    its drop's id, or None when no such offer was open (taken up, or passed already)."""
    drop_id = (
        await session.execute(
            update(line)
            .where(*where, line.status == "offered")
            .values(status="passed", updated_at=now)
            .returning(line.drop_id)
            .execution_options(synchronize_session=False)
        )
    ).scalar_one_or_none()
    return None if drop_id is None else str(drop_id)
