"""What every HTTP interface needs from the running app: the unit of work and the clock.

Interfaces (``api.py``, ``pages.py``) use these dependencies; services never import
this module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import Scope

from stallholder.kit.clock import Clock
from stallholder.kit.db import Database
from stallholder.kit.errors import PROBLEM_MEDIA_TYPE, DomainError
from stallholder.kit.rate_limits import RateLimiter
from stallholder.settings import Settings


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def rate_limiter_of(request: Request) -> RateLimiter:
    limiter: RateLimiter = request.app.state.rate_limiter
    return limiter


# Dependencies are coroutines even when they only read the app's state: FastAPI runs a
# plain function dependency in a worker thread, a thread hop for every request.
async def get_settings(request: Request) -> Settings:
    return settings_of(request)


async def get_rate_limiter(request: Request) -> RateLimiter:
    return rate_limiter_of(request)


def client_ip(request: Request) -> str:
    """The client's address: the TCP peer's, or behind a proxy the last address of the
    header ``trusted_proxy_header`` names (the one the proxy itself added; a client can
    put anything before it). A request without the header falls back to the peer."""
    header = settings_of(request).trusted_proxy_header
    if header:
        forwarded = request.headers.get(header, "")
        last = forwarded.rsplit(",", 1)[-1].strip()
        if last:
            return last
    return request.client.host if request.client else "unknown"


async def get_now(request: Request) -> datetime:
    """The request's one reading of the clock."""
    clock: Clock = request.app.state.clock
    return clock.now()


# ASGI scope keys through which a middleware hands a request its unit of work and caller.
UNIT_OF_WORK_SCOPE_KEY = "stallholder.unit_of_work"
PRINCIPAL_SCOPE_KEY = "stallholder.principal"
# The request's Idempotency-Key, scoped to its caller and hashed (64 hex digits). An effect
# that spans several transactions (a refund: recorded, sent to the gateway, settled) is
# stored with it, so a retry after a crash finds the effect instead of making another.
REQUEST_KEY_SCOPE_KEY = "stallholder.request_key"


@dataclass
class OuterUnitOfWork:
    """A request's unit of work opened and committed by a middleware, not by ``SessionDep``.

    The idempotency middleware opens one for a POST with an ``Idempotency-Key`` so that the
    stored response commits in the same transaction as the effect it describes (ADR 0004).
    ``SessionDep`` hands the endpoint ``session`` and sets ``has_failed`` when the endpoint
    raises; the owner then rolls back instead of committing.
    """

    session: AsyncSession
    has_failed: bool = False


def outer_unit_of_work(scope: Scope) -> OuterUnitOfWork | None:
    unit = scope.get(UNIT_OF_WORK_SCOPE_KEY)
    return unit if isinstance(unit, OuterUnitOfWork) else None


async def _unit_of_work(request: Request) -> AsyncIterator[AsyncSession]:
    outer = outer_unit_of_work(request.scope)
    if outer is not None:
        try:
            yield outer.session
        except BaseException:
            outer.has_failed = True
            raise
        return
    async with get_database(request).unit_of_work() as session:
        yield session


# ``scope="function"``: the transaction commits when the endpoint returns, before the
# response is sent, so a client never sees a 2xx for work that was then rolled back. The
# transaction begins at the endpoint's first statement, not before: an endpoint may first
# do work in short units of its own (or call out with none open) and then use this one.
# Under an ``OuterUnitOfWork`` the middleware that opened it commits instead, after the
# endpoint returned and before the response is sent.
SessionDep = Annotated[AsyncSession, Depends(_unit_of_work, scope="function")]
NowDep = Annotated[datetime, Depends(get_now)]


async def get_request_key(request: Request) -> str | None:
    """The request's caller-scoped Idempotency-Key (hashed), or None without one."""
    key = request.scope.get(REQUEST_KEY_SCOPE_KEY)
    return key if isinstance(key, str) else None


RequestKeyDep = Annotated[str | None, Depends(get_request_key)]
RateLimiterDep = Annotated[RateLimiter, Depends(get_rate_limiter)]
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
