"""Two requests that pass the same uniqueness check at the same moment: on PostgreSQL the
database refuses the second insert, and the loser gets a 409 problem, never a 500. (On
SQLite the single writer serialises them, so the check itself sees the first.)"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts import service as accounts
from stallholder.accounts.models import Creator
from stallholder.kit.db import Database
from tests.conftest import ADMIN_KEY, bearer

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
def database_url(postgres_url: str) -> str:
    return postgres_url


async def test_two_creators_claiming_one_slug_at_once_get_a_201_and_a_409(
    client: httpx.AsyncClient, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    both_checked = asyncio.Barrier(2)
    original: Callable[[AsyncSession, str], Awaitable[str]] = accounts._free_slug

    async def free_slug_then_wait(session: AsyncSession, wanted: str) -> str:
        slug = await original(session, wanted)
        await both_checked.wait()  # both requests have seen the slug free before either inserts
        return slug

    monkeypatch.setattr(accounts, "_free_slug", free_slug_then_wait)

    def create(email: str) -> Awaitable[httpx.Response]:
        return client.post(
            "/v1/creators",
            json={"display_name": "Ann Potter", "email": email},
            headers=bearer(ADMIN_KEY),
        )

    responses = await asyncio.gather(create("a@example.com"), create("b@example.com"))

    assert sorted(r.status_code for r in responses) == [201, 409]
    loser = next(r for r in responses if r.status_code == 409)
    assert loser.headers["content-type"] == "application/problem+json"
    assert loser.json()["type"] == "https://stallholder.dev/problems/conflict"
    async with database.unit_of_work() as session:
        slugs = (await session.execute(select(Creator.slug))).scalars().all()
        count = (await session.execute(select(func.count()).select_from(Creator))).scalar_one()
    assert (list(slugs), count) == (["ann-potter"], 1)
