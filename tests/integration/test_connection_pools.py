"""Connection pools on PostgreSQL keep every connection they open, up to their limit
(ADR 0031): a connection returned while others are out is not closed, so the next burst
finds it open instead of costing PostgreSQL a new backend; and no pool opens more than
its limit."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest
from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from stallholder.kit.db import POOL_CONNECTIONS, Database, create_engine
from stallholder.kit.rate_limits import DatabaseRateLimiter

pytestmark = pytest.mark.anyio


def _pool(engine: AsyncEngine) -> QueuePool:
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    return pool


async def _backends(engine: AsyncEngine, count: int) -> set[int]:
    """The backend pids of ``count`` connections held at once, then all returned."""
    async with AsyncExitStack() as stack:
        connections = [await stack.enter_async_context(engine.connect()) for _ in range(count)]
        return {
            int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            for connection in connections
        }


async def test_a_burst_past_the_old_ten_finds_the_same_backends_open_again(
    postgres_url: str,
) -> None:
    engine = create_engine(postgres_url)
    try:
        first = await _backends(engine, 12)
        assert _pool(engine).checkedin() == 12
        assert await _backends(engine, 12) == first
    finally:
        await engine.dispose()


async def test_an_engine_opens_at_most_its_limit(postgres_url: str) -> None:
    default = create_engine(postgres_url)
    try:
        assert (_pool(default).size(), _pool(default)._max_overflow) == (POOL_CONNECTIONS, 0)
    finally:
        await default.dispose()
    # The same limit, shown with three connections rather than thirty (the suite's other
    # workers share the server's connections): only the size is given, no overflow opens.
    engine = create_engine(postgres_url, pool_size=3, pool_timeout=0.5)
    try:
        async with AsyncExitStack() as stack:
            for _ in range(3):
                await stack.enter_async_context(engine.connect())
            with pytest.raises(exc.TimeoutError, match="limit of size 3 overflow 0"):
                await stack.enter_async_context(engine.connect())
    finally:
        await engine.dispose()


async def test_the_rate_limiters_own_pool_keeps_what_it_opened(postgres_url: str) -> None:
    database = Database(postgres_url)
    limiter = DatabaseRateLimiter(database, window_seconds=60)
    try:
        engine = limiter._own_engine()
        first = await _backends(engine, 5)
        assert _pool(engine).checkedin() == 5
        assert await _backends(engine, 5) == first
    finally:
        await limiter.aclose()
        await database.dispose()


async def test_a_returned_connection_goes_to_the_longest_waiting_request_not_a_newcomer(
    postgres_url: str,
) -> None:
    engine = create_engine(postgres_url, pool_size=1)
    served: list[str] = []

    async def request(name: str) -> None:
        async with engine.connect():
            served.append(name)
            await asyncio.sleep(0.01)

    try:
        held = await engine.connect()
        waiting = [asyncio.create_task(request(f"waiter {n}")) for n in range(1, 4)]
        await asyncio.sleep(0.2)  # all three wait for the one connection
        # The newcomer asks in the same turn of the event loop as the connection comes
        # back, before the first waiter has run again: as a request arriving under load.
        await held.close()
        await request("newcomer")
        await asyncio.gather(*waiting)
    finally:
        await engine.dispose()
    assert served == ["waiter 1", "waiter 2", "waiter 3", "newcomer"]


async def test_a_request_that_gave_up_waiting_is_skipped_and_loses_no_connection(
    postgres_url: str,
) -> None:
    engine = create_engine(postgres_url, pool_size=1, pool_timeout=0.2)
    try:
        held = await engine.connect()
        with pytest.raises(exc.TimeoutError):
            await engine.connect()
        cancelled = asyncio.create_task(engine.connect().__aenter__())
        await asyncio.sleep(0.05)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await held.close()
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar_one() == 1
        assert _pool(engine).checkedin() == 1
    finally:
        await engine.dispose()
