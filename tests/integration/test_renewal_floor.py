"""The renewal floor (``bench/renewal_floor.py``), the benchmark's reference for what the
worker's renewals could cost at least: it renews and charges every due subscription
exactly once, its journal balances, and its balances hold the sum of its postings, on
SQLite and PostgreSQL, in several batches over two connections side by side."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bench import renewal_floor as floor
from sqlalchemy import create_engine, select

from stallholder.kit.db import sync_url

pytestmark = pytest.mark.anyio

COUNT = 23


@pytest.fixture
def database_url(any_database_url: str) -> Iterator[str]:
    yield any_database_url
    # The floor's tables are not Stallholder's: the migrations test would see them.
    engine = create_engine(sync_url(any_database_url))
    floor.metadata.drop_all(engine)
    engine.dispose()


async def test_every_due_subscription_is_renewed_and_charged_once(database_url: str) -> None:
    connections = 2 if database_url.startswith("postgresql") else 1

    measured = await floor.measure(database_url, count=COUNT, connections=connections, batch=5)

    assert {key: measured[key] for key in ("invoices_paid", "gateway_charges", "orders")} == {
        "invoices_paid": COUNT,
        "gateway_charges": COUNT,
        "orders": COUNT,
    }
    assert measured["journal_sum"] == 0
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            balances = {
                row.account: row.amount for row in connection.execute(select(floor.balances))
            }
            receipts = sorted(connection.execute(select(floor.orders.c.receipt_number)).scalars())
            periods = set(connection.execute(select(floor.subscriptions.c.period_start)).scalars())
    finally:
        engine.dispose()
    assert balances == {account: amount * COUNT for account, amount in floor.POSTING}
    assert receipts == list(range(1, COUNT + 1))
    assert len(periods) == 1
