"""What a sale sends to the database, counted exactly, on both databases: the regression
guard of issue 7's statement cuts (docs/performance.md). A change that adds a statement
to the hot path fails here and says so; one that removes a statement updates the count."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from tests.conftest import T0, Api, bearer
from tests.statements import shape, statements

pytestmark = pytest.mark.anyio


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


async def test_a_new_buyers_sale_sends_a_fixed_number_of_statements(
    api: Api, database: Database
) -> None:
    creator, price = await api.shop()
    key = creator["secret_key"]
    # A first sale warms the API key cache, as a running server's would be.
    first = await api.session(key, price=price["id"], email="first@example.com")
    assert (await api.confirm(key, first["id"])).status_code == 200

    with statements(database, as_=shape) as creating:
        created = await api.http.post(
            "/v1/checkout/sessions",
            headers={**bearer(key), "Idempotency-Key": "create-1"},
            json={
                "line_items": [{"price": price["id"], "quantity": 2}],
                "customer_email": "new@example.com",
            },
        )
    assert created.status_code == 201, created.text
    with statements(database, as_=shape) as confirming:
        confirmed = await api.confirm(key, created.json()["id"], **{"Idempotency-Key": "pay-1"})
    assert confirmed.status_code == 200, confirmed.text

    sqlite = database.is_sqlite
    assert creating == [
        *(["BEGIN"] if sqlite else []),
        "SELECT prices",  # with its product, stock and drop
        "SELECT shipping_rates",  # a physical product: does the creator ship?
        # At the commit: the session, its line and the key's row, claimed with them (ADR
        # 0028), in one statement on PostgreSQL (ADR 0030).
        *(
            ["INSERT checkout_sessions", "INSERT checkout_line_items", "INSERT idempotency_keys"]
            if sqlite
            else ["WITH w0"]
        ),
    ]
    assert confirming == [
        # Step 1: the session locked with its lines, payee and latest attempt in one read.
        *(["BEGIN"] if sqlite else []),
        "SELECT checkout_sessions",
        *(
            ["UPDATE checkout_sessions", "INSERT payment_attempts"]
            if sqlite
            else ["WITH w0"]  # the attempt and the session's status in one (ADR 0030)
        ),
        # Step 2: the sandbox gateway remembers the charge (autocommit on PostgreSQL).
        *(["BEGIN"] if sqlite else []),
        "INSERT sandbox_charges",
        # Step 3: the outcome and the sale.
        *(["BEGIN"] if sqlite else []),
        "SELECT checkout_sessions",  # with whether any of its products has a key pool
        "UPDATE payment_attempts",
        *(
            ["SELECT customers", "INSERT buyers", "INSERT customers"]
            if sqlite
            else ["WITH found"]  # the customer and its buyer found or made in one
        ),
        *(
            ["UPDATE creators", "INSERT orders", "INSERT order_line_items"]
            if sqlite
            else ["WITH receipt"]  # the receipt number, the order and its lines in one
        ),
        # At the commit on PostgreSQL, in one statement: the ledger posting (the journal
        # transaction, its lines, the balances), the session's completion, both events
        # and the key's row (ADR 0030).
        *(
            [
                "INSERT journal_transactions",
                "INSERT journal_lines",
                "INSERT balances",
                "UPDATE checkout_sessions",
                "INSERT events",
                "INSERT idempotency_keys",
            ]
            if sqlite
            else ["WITH w0"]
        ),
        # No worker runs in this process; the embedded one would be woken here instead.
        *([] if sqlite else ["SELECT pg_notify"]),
    ]


async def test_a_hold_in_a_drop_sends_a_fixed_number_of_statements(
    api: Api, database: Database, clock: FrozenClock
) -> None:
    creator, price = await api.shop()
    key = creator["secret_key"]
    drop = await api.http.post(
        "/v1/drops",
        headers=bearer(key),
        json={
            "name": "Winter mugs",
            "opens_at": T0.isoformat(),
            "closes_at": (T0 + timedelta(hours=1)).isoformat(),
            "per_customer_limit": 1,
            "items": [{"price": price["id"], "quantity": 5}],
        },
    )
    assert drop.status_code == 201, drop.text
    clock.advance(timedelta(minutes=1))
    # A first hold warms the API key cache, as a running server's would be.
    first = await api.session(key, price=price["id"], email="first@example.com")

    with statements(database, as_=shape) as holding:
        held = await api.http.post(
            "/v1/checkout/sessions",
            headers={**bearer(key), "Idempotency-Key": "hold-1"},
            json={
                "line_items": [{"price": price["id"], "quantity": 1}],
                "customer_email": "new@example.com",
            },
        )
    assert held.status_code == 201, held.text
    assert first["id"] != held.json()["id"]

    sqlite = database.is_sqlite
    assert holding == [
        *(["BEGIN"] if sqlite else []),
        "SELECT prices",  # with its product, stock, drop item and units left
        "SELECT drops",
        "INSERT drop_buyers",  # the buyer's count against the per-customer limit
        "SELECT shipping_rates",  # a physical product: does the creator ship?
        # At the commit: the session, its line, the claim and the key's row in one
        # statement on PostgreSQL (ADR 0030), then the drop item's conditional update,
        # last (ADR 0024).
        *(
            [
                "INSERT checkout_sessions",
                "INSERT drop_claims",
                "INSERT checkout_line_items",
                "INSERT idempotency_keys",
            ]
            if sqlite
            else ["WITH w0"]
        ),
        "UPDATE drop_items",
    ]


async def test_every_statement_of_a_sale_is_compiled_once_and_then_taken_from_the_cache(
    api: Api, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLAlchemy compiles a statement once and reuses it by its cache key; a statement
    with no key (a multi-row ``insert().values([...])`` has none) is compiled on every
    execution, about a millisecond of CPU each (docs/performance.md)."""
    creator, price = await api.shop()
    key = creator["secret_key"]
    for n in range(2):
        if n == 1:
            caplog.clear()
            caplog.set_level(logging.INFO, logger="sqlalchemy.engine.Engine")
        created = await api.session(key, price=price["id"], email=f"buyer{n}@example.com")
        paid = await api.confirm(key, created["id"], **{"Idempotency-Key": f"pay-{n}"})
        assert paid.status_code == 200, paid.text
    compiled = [
        record.getMessage()[:40]
        for record in caplog.records
        if record.name == "sqlalchemy.engine.Engine" and record.getMessage().startswith("[")
    ]
    assert len(compiled) >= 12
    # ``[raw sql]``: SQLite's ``BEGIN IMMEDIATE``, sent as it is, never compiled.
    assert [m for m in compiled if not m.startswith(("[cached since", "[raw sql]"))] == []
