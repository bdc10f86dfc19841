"""Integrity errors are told apart by constraint name on both databases: the unique rule an
insert expects becomes its typed 409, and anything else is a bug, a logged 500."""

from __future__ import annotations

import logging

import httpx
import pytest
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.sql.expression import Executable

from stallholder.accounts import service as accounts
from stallholder.accounts.models import Creator, Customer
from stallholder.catalog.models import Collection
from stallholder.kit.db import Database, is_unique_violation, unique_violation
from tests.conftest import ADMIN_KEY, T0, bearer

pytestmark = pytest.mark.anyio


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


def _creator(creator_id: str, slug: str) -> dict[str, object]:
    return {
        "id": creator_id,
        "slug": slug,
        "display_name": "X",
        "email": "x@example.com",
        "receipt_counter": 0,
        "created_at": T0,
    }


async def _integrity_error_of(database: Database, *statements: Executable) -> IntegrityError:
    """The error the last of ``statements`` raises, run in one unit of work."""
    *before, last = statements
    async with database.sessionmaker() as session, session.begin():
        for statement in before:
            await session.execute(statement)
        with pytest.raises(IntegrityError) as caught:
            await session.execute(last)
    return caught.value


async def test_a_unique_violation_is_named_by_its_constraint(database: Database) -> None:
    error = await _integrity_error_of(
        database,
        insert(Creator).values(**_creator("cr_1", "same")),
        insert(Creator).values(**_creator("cr_2", "same")),
    )
    assert unique_violation(error) == "uq_creators_slug"
    assert is_unique_violation(error, "uq_creators_slug") is True
    assert is_unique_violation(error, "uq_collections_creator_id_slug") is False


async def test_a_two_column_unique_violation_is_named_too(database: Database) -> None:
    collection = {
        "creator_id": "cr_1",
        "name": "C",
        "slug": "c",
        "description": "",
        "created_at": T0,
    }
    error = await _integrity_error_of(
        database,
        insert(Creator).values(**_creator("cr_1", "one")),
        insert(Collection).values(id="col_1", **collection),
        insert(Collection).values(id="col_2", **collection),
    )
    assert unique_violation(error) == "uq_collections_creator_id_slug"


async def test_a_duplicate_primary_key_is_named_as_such(database: Database) -> None:
    error = await _integrity_error_of(
        database,
        insert(Creator).values(**_creator("cr_1", "one")),
        insert(Creator).values(**_creator("cr_1", "two")),
    )
    assert unique_violation(error) == "pk_creators"


async def test_a_foreign_key_violation_is_no_unique_violation(database: Database) -> None:
    error = await _integrity_error_of(
        database,
        insert(Customer).values(
            id="cus_1",
            creator_id="cr_missing",
            email="b@example.com",
            time_zone="UTC",
            created_at=T0,
        ),
    )
    assert unique_violation(error) is None


async def test_an_unexpected_integrity_error_is_a_logged_500_not_a_409(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    created = await client.post(
        "/v1/creators",
        json={"display_name": "Kiln", "email": "k@example.com"},
        headers=bearer(ADMIN_KEY),
    )
    secret = created.json()["secret_key"]

    async def insert_an_orphan(*_: object, **__: object) -> Customer:
        database: Database = client._transport.app.state.database  # type: ignore[attr-defined]
        raise await _integrity_error_of(
            database,
            insert(Customer).values(
                id="cus_1",
                creator_id="cr_gone",
                buyer_id="byr_gone",
                email="b@example.com",
                time_zone="UTC",
                created_at=T0,
            ),
        )

    monkeypatch.setattr(accounts, "create_customer", insert_an_orphan)
    with caplog.at_level(logging.ERROR, logger="stallholder"):
        response = await client.post(
            "/v1/customers", json={"email": "b@example.com"}, headers=bearer(secret)
        )

    assert response.status_code == 500
    assert response.json()["type"] == "https://stallholder.dev/problems/internal-error"
    assert [r.message for r in caplog.records if r.levelno == logging.ERROR] == [
        "unhandled error on POST /v1/customers"
    ]


async def test_a_database_pool_that_stays_busy_is_a_503_with_retry_after_not_a_500(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = await client.post(
        "/v1/creators",
        json={"display_name": "Kiln", "email": "k@example.com"},
        headers=bearer(ADMIN_KEY),
    )
    secret = created.json()["secret_key"]

    async def pool_exhausted(*_: object, **__: object) -> Customer:
        raise PoolTimeout("QueuePool limit of size 5 overflow 10 reached")

    monkeypatch.setattr(accounts, "create_customer", pool_exhausted)
    response = await client.post(
        "/v1/customers", json={"email": "b@example.com"}, headers=bearer(secret)
    )

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json()["type"] == "https://stallholder.dev/problems/service-busy"
