"""Two requests that pass the same uniqueness check at the same moment: on PostgreSQL the
database refuses the second insert by constraint name, and the loser gets the typed 409 problem
of that rule, never a 500. (On SQLite the single writer serialises them, so the check itself
sees the first.)"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts import service as accounts
from stallholder.accounts.models import Creator
from stallholder.catalog import service as catalog
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
    assert loser.json()["type"] == "https://stallholder.dev/problems/slug-taken"
    assert loser.json()["slug_requested"] == "ann-potter"
    async with database.unit_of_work() as session:
        slugs = (await session.execute(select(Creator.slug))).scalars().all()
        count = (await session.execute(select(func.count()).select_from(Creator))).scalar_one()
    assert (list(slugs), count) == (["ann-potter"], 1)


async def test_two_products_claiming_one_sku_at_once_get_a_201_and_a_409(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = await client.post(
        "/v1/creators",
        json={"display_name": "Kiln", "email": "k@example.com"},
        headers=bearer(ADMIN_KEY),
    )
    secret = created.json()["secret_key"]
    both_checked = asyncio.Barrier(2)
    original = catalog._ensure_free_skus

    async def check_then_wait(session: AsyncSession, creator_id: str, skus: Any) -> None:
        await original(session, creator_id, skus)
        await both_checked.wait()

    monkeypatch.setattr(catalog, "_ensure_free_skus", check_then_wait)

    def create(name: str) -> Awaitable[httpx.Response]:
        return client.post(
            "/v1/products",
            json={"kind": "physical", "name": name, "variants": [{"sku": "MUG-1"}]},
            headers=bearer(secret),
        )

    responses = await asyncio.gather(create("Mug"), create("Other mug"))

    assert sorted(r.status_code for r in responses) == [201, 409]
    loser = next(r for r in responses if r.status_code == 409)
    assert loser.json()["type"] == "https://stallholder.dev/problems/sku-taken"
