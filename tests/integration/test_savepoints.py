"""A savepoint inside a unit of work (``begin_nested``): what the transaction knows and
must still do before its commit (``kit.db``: the memo, the final steps) survives the
savepoint's release, and rolling back to it forgets only what was added since it began."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.kit.db import Database, defer_until_commit, transaction_memo

pytestmark = pytest.mark.anyio


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


async def test_final_steps_and_the_memo_from_before_a_savepoint_outlive_it(
    database: Database,
) -> None:
    ran: list[str] = []

    def step(name: str) -> None:
        async def run(_session: AsyncSession) -> None:
            ran.append(name)

        defer_until_commit(session, run)

    async with database.unit_of_work() as session:
        step("before")
        transaction_memo(session)["seen"] = ["before"]
        transaction_memo(session)["by invoice"] = {"in_1": {1: "attempt 1"}}
        savepoint = await session.begin_nested()
        step("rolled back")
        transaction_memo(session)["seen"].append("rolled back")
        transaction_memo(session)["by invoice"]["in_1"][2] = "attempt 2"
        transaction_memo(session)["only inside"] = True
        await savepoint.rollback()
        assert transaction_memo(session) == {
            "seen": ["before"],
            "by invoice": {"in_1": {1: "attempt 1"}},
        }
        del transaction_memo(session)["by invoice"]
        async with session.begin_nested():
            step("released")
            transaction_memo(session)["seen"].append("released")
        assert transaction_memo(session) == {"seen": ["before", "released"]}
    assert ran == ["before", "released"]
    async with database.unit_of_work() as session:
        assert transaction_memo(session) == {}  # the transaction's own, gone with it
