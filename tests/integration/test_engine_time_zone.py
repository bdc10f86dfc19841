"""A PostgreSQL engine's connections talk UTC whatever the server's default zone, keeping
a URL's own ``options``, and timestamps come back as ``datetime.UTC`` itself."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote

import pytest
from sqlalchemy import select, text

from stallholder.events.models import Event
from stallholder.kit.db import Database, create_engine
from tests import factories
from tests.conftest import T0

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


async def test_connections_are_in_utc_and_keep_the_urls_own_options(postgres_url: str) -> None:
    options = quote("-c TimeZone=Pacific/Auckland -c statement_timeout=12345")
    engine = create_engine(f"{postgres_url}?options={options}")
    try:
        async with engine.connect() as connection:
            zone = (await connection.execute(text("SHOW TimeZone"))).scalar_one()
            timeout = (await connection.execute(text("SHOW statement_timeout"))).scalar_one()
            now = (await connection.execute(text("SELECT now()"))).scalar_one()
    finally:
        await engine.dispose()
    assert (zone, timeout) == ("UTC", "12345ms")
    assert now.tzinfo is UTC


async def test_a_timestamp_column_reads_back_in_utc(postgres_url: str) -> None:
    database = Database(postgres_url)
    try:
        async with database.unit_of_work() as session:
            creator = await factories.create_creator(session, now=T0)
            session.add(
                Event(
                    id="evt_utc",
                    creator_id=creator.id,
                    type="order.paid",
                    api_version="2026-11-01",
                    data={},
                    created_at=T0,
                )
            )
        async with database.read() as session:
            created = (
                await session.execute(select(Event.created_at).where(Event.id == "evt_utc"))
            ).scalar_one()
    finally:
        await database.dispose()
    assert created == T0 == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert created.tzinfo is UTC
