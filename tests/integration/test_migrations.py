"""The migrations produce exactly the tables the models declare, on both databases."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from stallholder.kit.db import sync_url
from stallholder.migrations import upgrade
from stallholder.tables import metadata


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
    """A database with no tables yet, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    server: str = request.getfixturevalue("postgres_server_url")
    name = f"stallholder_migration_{uuid.uuid4().hex[:10]}"
    admin = create_engine(sync_url(server), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield server.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_payment_attempts_from_before_purposes_become_checkout_session_charges(
    empty_database_url: str,
) -> None:
    """0003's data step: every attempt recorded before charges had a purpose was for a
    checkout session. (Kept when 0003 is regenerated from the models.)"""
    fresh = empty_database_url
    upgrade(fresh, "0002")
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
