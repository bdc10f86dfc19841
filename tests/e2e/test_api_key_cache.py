"""API keys cached per server process for a bounded time (ADR 0015): a rolled key stops
working at once in the process that rolled it, and within the cache's lifetime in every
other process."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

import httpx
import pytest

from stallholder.accounts import service as accounts
from stallholder.accounts.service import KeyCache, Principal
from stallholder.app import create_app
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.settings import Settings
from tests.conftest import ADMIN_KEY, Api, bearer

pytestmark = pytest.mark.anyio


class Seconds:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def seconds() -> Seconds:
    return Seconds()


async def _process(
    settings: Settings, database: Database, clock: FrozenClock, seconds: Seconds
) -> AsyncGenerator[Api, None]:
    """One more server process on the same database, with its own key cache."""
    app = create_app(settings, database=database, clock=clock, run_worker=False)
    cache = KeyCache(settings.api_key_cache_seconds, clock=seconds)
    # A real process hears only its own commits: this cache must not be told about rolls
    # committed by the test's other "process" in the same interpreter.
    KeyCache._live.discard(cache)
    app.state.key_cache = cache
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield Api(http)


@pytest.fixture
async def here(
    settings: Settings, database: Database, clock: FrozenClock, seconds: Seconds
) -> AsyncIterator[Api]:
    async for api in _process(settings, database, clock, seconds):
        yield api


@pytest.fixture
async def elsewhere(
    settings: Settings, database: Database, clock: FrozenClock, seconds: Seconds
) -> AsyncIterator[Api]:
    async for api in _process(settings, database, clock, seconds):
        yield api


async def _status(api: Api, key: str, *, idempotency_key: str | None = None) -> int:
    if idempotency_key is None:
        return (await api.http.get("/v1/products", headers=bearer(key))).status_code
    response = await api.http.post(
        "/v1/products",
        headers={**bearer(key), "Idempotency-Key": idempotency_key},
        json={"kind": "digital", "name": "Zine PDF"},
    )
    return response.status_code


async def _roll(api: Api, creator_id: str) -> None:
    response = await api.http.post(
        f"/v1/creators/{creator_id}/keys/roll", headers=bearer(ADMIN_KEY)
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("idempotency_key", [None, "k-1"])
async def test_a_key_rolled_in_this_process_stops_working_here_at_once(
    api: Api, idempotency_key: str | None
) -> None:
    here = api  # the app as created, its cache told about this process's commits
    creator = await here.creator()
    key = creator["secret_key"]
    assert await _status(here, key, idempotency_key=idempotency_key) in (200, 201)  # cached

    await _roll(here, creator["id"])

    assert await _status(here, key) == 401
    assert await _status(here, key, idempotency_key="k-2") == 401


async def test_a_key_rolled_elsewhere_stops_working_here_within_the_cache_lifetime(
    here: Api, elsewhere: Api, seconds: Seconds, settings: Settings
) -> None:
    assert settings.api_key_cache_seconds == 5.0
    creator = await here.creator()
    key = creator["secret_key"]
    assert await _status(here, key) == 200  # checked against the database, then cached

    await _roll(elsewhere, creator["id"])
    assert await _status(elsewhere, key) == 401

    seconds.now += 4.9
    assert await _status(here, key) == 200  # still trusted here: the bounded staleness
    seconds.now += 0.1
    assert await _status(here, key) == 401
    assert await _status(here, key, idempotency_key="k-3") == 401


@pytest.fixture
def uncached(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_key_cache_seconds": 0.0})


async def test_without_a_cache_a_key_rolled_elsewhere_stops_working_at_once(
    uncached: Settings, database: Database, clock: FrozenClock, seconds: Seconds
) -> None:
    processes = [_process(uncached, database, clock, seconds) for _ in range(2)]
    here, elsewhere = [await anext(process) for process in processes]
    try:
        creator = await here.creator()
        key = creator["secret_key"]
        assert await _status(here, key) == 200
        await _roll(elsewhere, creator["id"])
        assert await _status(here, key) == 401
    finally:
        for process in processes:
            await process.aclose()


def test_the_cache_keeps_a_principal_for_its_lifetime_only() -> None:
    seconds = Seconds()
    cache = KeyCache(5.0, clock=seconds, max_entries=2)
    principal = Principal(kind="secret", creator_id="cr_1")
    cache.put("h1", principal)
    seconds.now += 4.99
    assert cache.get("h1") == principal
    seconds.now += 0.01
    assert cache.get("h1") is None
    cache.put("h1", principal)
    cache.put("h2", Principal(kind="publishable", creator_id="cr_2"))
    cache.forget_creator("cr_1")
    assert (cache.get("h1"), cache.get("h2")) == (None, Principal("publishable", "cr_2"))
    cache.put("h3", principal)
    cache.put("h4", principal)  # full (h2, h3): starts again rather than growing
    assert (cache.get("h2"), cache.get("h3"), cache.get("h4")) == (None, None, principal)
    off = KeyCache(0.0, clock=seconds)
    off.put("h1", principal)
    assert off.get("h1") is None


async def test_a_roll_committed_after_savepoints_still_stops_the_old_key_here(
    api: Api, database: Database, clock: FrozenClock
) -> None:
    # A rollback to a savepoint used to forget the roll, so the commit left the old key
    # in the cache; a savepoint's release emptied the cache before the roll was committed.
    creator = await api.creator()
    key = creator["secret_key"]
    assert await _status(api, key) == 200  # cached
    async with database.unit_of_work() as session:
        await accounts.roll_keys(session, creator_id=creator["id"], now=clock.now())
        savepoint = await session.begin_nested()
        await savepoint.rollback()
        async with session.begin_nested():
            pass
    assert await _status(api, key) == 401
