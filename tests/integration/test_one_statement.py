"""``Database.one_statement``: a write that stands alone, with no transaction around it on
PostgreSQL (no ``BEGIN`` or ``COMMIT`` round trips) and a ``BEGIN IMMEDIATE`` transaction
on SQLite. The sandbox gateway's memory of charges and the drop rate limits use it."""

from __future__ import annotations

from typing import cast

import pytest
from sqlalchemy import Table, func, insert, select, text

from stallholder.kit import work
from stallholder.kit.db import Database
from tests.conftest import T0

pytestmark = pytest.mark.anyio

_WORK = cast(Table, work.WorkItem.__table__)


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


def _row(n: int) -> dict[str, object]:
    return {
        "id": f"wrk_one_{n}",
        "kind": "test.one",
        "payload": {},
        "state": "pending",
        "due_at": T0,
        "attempts": 0,
        "created_at": T0,
        "updated_at": T0,
    }


async def _count(database: Database) -> int:
    async with database.read() as session:
        counted = (
            select(func.count()).select_from(work.WorkItem).where(work.WorkItem.kind == "test.one")
        )
        return int((await session.execute(counted)).scalar_one())


async def test_a_write_is_kept_once_its_block_ends_and_a_failed_one_changes_nothing(
    database: Database,
) -> None:
    async with database.one_statement() as connection:
        await connection.execute(insert(_WORK), _row(1))
    assert await _count(database) == 1
    with pytest.raises(Exception, match=r"UNIQUE|unique|duplicate"):
        async with database.one_statement() as connection:
            await connection.execute(insert(_WORK), _row(1))
    assert await _count(database) == 1


@pytest.mark.postgres
async def test_on_postgresql_the_statement_commits_by_itself_with_no_transaction(
    postgres_url: str,
) -> None:
    """Visible to another connection before the block ends: autocommit, so no ``BEGIN``
    was sent and none is open (``now()`` differs from the transaction's start: each
    statement is its own transaction)."""
    database = Database(postgres_url)
    try:
        async with database.one_statement() as connection:
            await connection.execute(insert(_WORK), _row(2))
            assert await _count(database) == 1
            status = (await connection.execute(text("SELECT 1"))).scalar_one()
            assert status == 1
            in_transaction = await connection.run_sync(
                lambda sync: sync.connection.dbapi_connection.info.transaction_status  # type: ignore[union-attr]
            )
            assert int(in_transaction) == 0  # psycopg's TransactionStatus.IDLE
    finally:
        await database.dispose()
