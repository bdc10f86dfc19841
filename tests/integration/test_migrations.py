"""The migrations produce exactly the tables the models declare, on both databases."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from stallholder.kit.db import sync_url
from stallholder.migrations import alembic_config, upgrade
from stallholder.tables import metadata
from tests.conftest import POSTGRES_URL_VARIABLE


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


def test_models_and_migrations_agree(database_url: str) -> None:
    engine = create_engine(sync_url(database_url))
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    request.getfixturevalue("postgres_server_url")  # skips (or fails in CI) without a server
    base = os.environ[POSTGRES_URL_VARIABLE]
    name = f"stallholder_migrate_{uuid.uuid4().hex[:10]}"
    admin = create_engine(sync_url(base), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(sync_url(base)).set(database=name).render_as_string(hide_password=False)
    yield "postgresql://" + url.split("://", 1)[1]
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_0003_gives_existing_rows_their_creator_and_keeps_a_fixed_fee_for_usd(
    empty_database_url: str,
) -> None:
    upgrade(empty_database_url, "0002")
    engine = create_engine(sync_url(empty_database_url))
    now = "2026-03-01 12:00:00"
    with engine.begin() as connection:
        for creator, fixed in (("cr_a", 30), ("cr_b", None)):
            connection.execute(
                text(
                    "INSERT INTO creators (id, slug, display_name, email, platform_fee_bps, "
                    "platform_fee_fixed, receipt_counter, created_at) "
                    "VALUES (:id, :id, 'X', 'x@example.com', NULL, :fixed, 0, :now)"
                ),
                {"id": creator, "fixed": fixed, "now": now},
            )
        connection.execute(
            text(
                "INSERT INTO products (id, creator_id, kind, name, description, status, "
                "created_at, updated_at) VALUES ('prod_1', 'cr_b', 'digital', 'P', '', "
                "'published', :now, :now)"
            ),
            {"now": now},
        )
        connection.execute(
            text(
                "INSERT INTO collections (id, creator_id, name, slug, description, created_at) "
                "VALUES ('col_1', 'cr_b', 'C', 'c', '', :now)"
            ),
            {"now": now},
        )
        connection.execute(
            text(
                "INSERT INTO collection_products (collection_id, product_id, position) "
                "VALUES ('col_1', 'prod_1', 0)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO journal_transactions (id, creator_id, kind, reference_id, "
                "description, created_at) VALUES ('txn_1', 'cr_b', 'payment', 'ord_1', '', :now)"
            ),
            {"now": now},
        )
        connection.execute(
            text(
                "INSERT INTO journal_lines (transaction_id, account, currency, amount) "
                "VALUES ('txn_1', 'platform:fees', 'usd', 5), ('txn_1', 'external:x', 'usd', -5)"
            )
        )
    engine.dispose()

    upgrade(empty_database_url)

    engine = create_engine(sync_url(empty_database_url))
    with engine.connect() as connection:
        fees = connection.execute(
            text("SELECT id, platform_fee_fixed_amounts FROM creators ORDER BY id")
        ).all()
        member = connection.execute(text("SELECT creator_id FROM collection_products")).all()
        lines = connection.execute(text("SELECT creator_id FROM journal_lines")).all()
    engine.dispose()
    parsed = [(cid, json.loads(v) if isinstance(v, str) else v) for cid, v in fees]
    assert parsed == [("cr_a", {"usd": 30}), ("cr_b", None)]
    assert (member, lines) == ([("cr_b",)], [("cr_b",), ("cr_b",)])


def test_payment_attempts_from_before_purposes_become_checkout_session_charges(
    empty_database_url: str,
) -> None:
    """0004's data step: every attempt recorded before charges had a purpose was for a
    checkout session. (Kept when 0004 is regenerated from the models.)"""
    fresh = empty_database_url
    upgrade(fresh, "0003")
    engine = create_engine(sync_url(fresh))
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO creators (id, slug, display_name, email, receipt_counter, "
                "created_at) VALUES ('cr_1', 'kiln', 'Kiln', 'k@example.com', 0, "
                "'2026-03-01 12:00:00')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO payment_attempts (id, creator_id, checkout_session_id, "
                "attempt_number, gateway, idempotency_key, payment_method, amount, currency, "
                "status, processor_fee, created_at) VALUES ('pay_1', 'cr_1', 'cs_1', 1, "
                "'sandbox', 'cs_1:attempt:1', 'tok_visa', 4800, 'usd', 'succeeded', 169, "
                "'2026-03-01 12:00:00')"
            )
        )
    upgrade(fresh)
    with engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT purpose, purpose_id, attempt_number, is_off_session, resolve_after "
                "FROM payment_attempts"
            )
        ).one()
    engine.dispose()
    assert tuple(row) == ("checkout_session", "cs_1", 1, False, None)


def test_0008_links_existing_customers_to_buyers_and_grants_their_saved_methods(
    empty_database_url: str,
) -> None:
    """0008's data step: customers of several creators with one address (in any case)
    become one buyer; each saved method belongs to that buyer and is granted, with its
    default, to the customer it was saved to. (Kept when 0008 is regenerated.)"""
    fresh = empty_database_url
    upgrade(fresh, "0006")
    engine = create_engine(sync_url(fresh))
    now = "2026-03-01 12:00:00"
    with engine.begin() as connection:
        for creator in ("cr_a", "cr_b"):
            connection.execute(
                text(
                    "INSERT INTO creators (id, slug, display_name, email, receipt_counter, "
                    "created_at) VALUES (:id, :id, 'X', 'x@example.com', 0, :now)"
                ),
                {"id": creator, "now": now},
            )
        for customer, creator, email, created in (
            ("cus_1", "cr_a", "ana@example.com", "2026-03-01 12:00:00"),
            ("cus_2", "cr_b", "Ana@EXAMPLE.com", "2026-03-02 12:00:00"),
            ("cus_3", "cr_b", "ben@example.com", "2026-03-03 12:00:00"),
        ):
            connection.execute(
                text(
                    "INSERT INTO customers (id, creator_id, email, time_zone, created_at) "
                    "VALUES (:id, :creator, :email, 'UTC', :created)"
                ),
                {"id": customer, "creator": creator, "email": email, "created": created},
            )
        for method, customer, creator, is_default, detached in (
            ("pm_1", "cus_1", "cr_a", True, None),
            ("pm_2", "cus_2", "cr_b", False, None),
            ("pm_3", "cus_2", "cr_b", False, now),
        ):
            connection.execute(
                text(
                    "INSERT INTO payment_methods (id, creator_id, customer_id, gateway, "
                    "gateway_customer, gateway_reference, type, is_default, detached_at, "
                    "created_at) VALUES (:id, :creator, :customer, 'sandbox', 'sbx_cus', "
                    "'tok_visa', 'card', :is_default, :detached, :now)"
                ),
                {
                    "id": method,
                    "creator": creator,
                    "customer": customer,
                    "is_default": is_default,
                    "detached": detached,
                    "now": now,
                },
            )
    engine.dispose()

    upgrade(fresh)

    engine = create_engine(sync_url(fresh))
    with engine.connect() as connection:
        buyers = connection.execute(text("SELECT id, email_key FROM buyers ORDER BY email_key"))
        by_key = {key: buyer for buyer, key in buyers}
        customers = connection.execute(text("SELECT id, buyer_id FROM customers ORDER BY id")).all()
        methods = connection.execute(
            text("SELECT id, buyer_id FROM payment_methods ORDER BY id")
        ).all()
        grants = connection.execute(
            text(
                "SELECT customer_id, payment_method_id, creator_id, is_default "
                "FROM payment_method_grants ORDER BY payment_method_id"
            )
        ).all()
    engine.dispose()
    ana, ben = by_key["ana@example.com"], by_key["ben@example.com"]
    assert sorted(by_key) == ["ana@example.com", "ben@example.com"]
    assert ana.startswith("byr_")
    assert [tuple(row) for row in customers] == [("cus_1", ana), ("cus_2", ana), ("cus_3", ben)]
    assert [tuple(row) for row in methods] == [("pm_1", ana), ("pm_2", ana), ("pm_3", ana)]
    assert [tuple(row) for row in grants] == [
        ("cus_1", "pm_1", "cr_a", True),
        ("cus_2", "pm_2", "cr_b", False),
    ]


def test_0026_drops_the_per_row_deadline_items_and_its_downgrade_gives_them_back(
    empty_database_url: str,
) -> None:
    """ADR 0029: sweeps replace the items enqueued per session, attempt and refund. The
    upgrade deletes those and keeps every other item (the settlement sweeps' schedules,
    an email); the downgrade drops the sweeps' schedules (its statements that re-enqueue
    an item per open session, processing attempt and pending refund run on both
    databases; there are none of those rows here)."""
    fresh = empty_database_url
    upgrade(fresh, "0025")
    engine = create_engine(sync_url(fresh))
    now = "2026-03-01 12:00:00"
    items = [
        ("wrk_1", "checkout.expire_session", "cs_1"),
        ("wrk_2", "payments.settle_attempts", "payments.settle_attempts:pay_1:2026"),
        ("wrk_3", "payments.settle_attempts", "payments.settle_attempts"),
        ("wrk_4", "orders.settle_refunds", None),
        ("wrk_5", "notifications.send_email", None),
    ]
    with engine.begin() as connection:
        for item_id, kind, dedupe_key in items:
            connection.execute(
                text(
                    "INSERT INTO work_items (id, kind, payload, creator_id, dedupe_key, state, "
                    "due_at, attempts, created_at, updated_at) VALUES (:id, :kind, '{}', "
                    "'cr_1', :dedupe_key, 'pending', :now, 0, :now, :now)"
                ),
                {"id": item_id, "kind": kind, "dedupe_key": dedupe_key, "now": now},
            )
    upgrade(fresh, "0026")
    with engine.begin() as connection:
        left = connection.execute(text("SELECT id FROM work_items ORDER BY id")).scalars().all()
        assert left == ["wrk_3", "wrk_5"]
    command.downgrade(alembic_config(fresh), "0025")
    with engine.connect() as connection:
        left = connection.execute(text("SELECT id FROM work_items ORDER BY id")).scalars().all()
    engine.dispose()
    assert left == ["wrk_5"]
