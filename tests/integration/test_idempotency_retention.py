"""Idempotency keys replay for 24 hours, then a worker sweep forgets them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from stallholder.jobs.worker import Worker
from stallholder.kit import work
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.kit.idempotency import PRUNE_KEYS, IdempotencyKey, prune_expired_keys
from stallholder.settings import Settings
from tests.conftest import Api, bearer

pytestmark = pytest.mark.anyio


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


async def _keys(database: Database) -> int:
    async with database.unit_of_work() as session:
        return int(
            (await session.execute(select(func.count()).select_from(IdempotencyKey))).scalar_one()
        )


async def test_a_key_is_forgotten_after_24_hours_and_not_before(
    api: Api, database: Database, clock: FrozenClock
) -> None:
    creator = await api.creator()
    headers = {**bearer(creator["secret_key"]), "Idempotency-Key": "customer-1"}

    async def create(email: str) -> int:
        response = await api.http.post(
            "/v1/customers", headers=headers, json={"email": email, "name": "Ada"}
        )
        return response.status_code

    assert await create("ada@example.com") == 201
    clock.advance(timedelta(hours=23, minutes=59))
    async with database.unit_of_work() as session:
        assert await prune_expired_keys(session, clock.now()) == 0
    assert await create("other@example.com") == 409  # still remembered: another body

    clock.advance(timedelta(minutes=2))
    async with database.unit_of_work() as session:
        assert await prune_expired_keys(session, clock.now()) == 1
    assert await _keys(database) == 0
    assert await create("other@example.com") == 201  # a new request under the old key


async def test_the_worker_prunes_keys_every_hour(
    api: Api, database: Database, clock: FrozenClock, settings: Settings
) -> None:
    creator = await api.creator()
    headers = {**bearer(creator["secret_key"]), "Idempotency-Key": "customer-1"}
    response = await api.http.post(
        "/v1/customers", headers=headers, json={"email": "ada@example.com", "name": "Ada"}
    )
    assert response.status_code == 201
    async with database.unit_of_work() as session:
        await work.ensure_periodic(session, [PRUNE_KEYS], now=clock.now())
    worker = Worker(database, clock, settings=settings, kinds=[PRUNE_KEYS])

    await worker.run_once()
    assert await _keys(database) == 1  # not 24 hours old yet
    clock.advance(timedelta(hours=25))
    await worker.run_once()

    assert await _keys(database) == 0
    async with database.unit_of_work() as session:
        [item] = (await session.execute(select(work.WorkItem))).scalars().all()
    assert (item.kind, item.state, item.due_at) == (
        "kit.prune_idempotency_keys",
        "pending",
        clock.now() + timedelta(hours=1),
    )
