"""What every HTTP interface needs from the running app: the unit of work and the clock.

Interfaces (``api.py``, ``pages.py``) use these dependencies; services never import
this module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.kit.clock import Clock
from stallholder.kit.db import Database
from stallholder.kit.errors import PROBLEM_MEDIA_TYPE, DomainError
from stallholder.settings import Settings


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_now(request: Request) -> datetime:
    """The request's one reading of the clock."""
    clock: Clock = request.app.state.clock
    return clock.now()


async def _unit_of_work(request: Request) -> AsyncIterator[AsyncSession]:
    async with get_database(request).unit_of_work() as session:
        yield session


# ``scope="function"``: the transaction commits when the endpoint returns, before the
# response is sent, so a client never sees a 2xx for work that was then rolled back.
SessionDep = Annotated[AsyncSession, Depends(_unit_of_work, scope="function")]
NowDep = Annotated[datetime, Depends(get_now)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def problem_response(error: DomainError, instance: str | None = None) -> JSONResponse:
    """A problem+json response for an error that is returned, not raised.

    Returning keeps the unit of work committing: a declined payment attempt is recorded.
    """
    return JSONResponse(
        error.problem(instance),
        status_code=error.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=error.headers(),
    )
