from __future__ import annotations

from datetime import UTC, datetime

import pytest
from psycopg import _queries
from psycopg.adapt import Transformer

from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import async_url, create_engine, sync_url
from stallholder.kit.ids import new_id


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///var/x.db", "sqlite+aiosqlite:///var/x.db"),
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgres://u:p@h:5433/db", "postgresql+psycopg://u:p@h:5433/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
    ],
)
def test_async_url_picks_the_driver(url: str, expected: str) -> None:
    assert async_url(url) == expected


def test_sync_url_for_alembic() -> None:
    assert sync_url("sqlite:///var/x.db") == "sqlite:///var/x.db"
    assert sync_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize("url", ["mysql://u@h/db", "not a url"])
def test_unsupported_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"unsupported database|not a database URL"):
        async_url(url)


def test_ids_are_prefixed_unique_and_sort_in_creation_order() -> None:
    ids = [new_id("prod") for _ in range(2000)]
    assert all(i.startswith("prod_") and len(i) == len("prod_") + 25 for i in ids)
    assert len(set(ids)) == 2000
    assert ids == sorted(ids)


def test_frozen_clock_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="aware"):
        FrozenClock(datetime(2026, 1, 1))  # noqa: DTZ001
    clock = FrozenClock(datetime(2026, 1, 1, tzinfo=UTC))
    clock.set(datetime(2026, 1, 2, tzinfo=UTC))
    assert clock.now() == datetime(2026, 1, 2, tzinfo=UTC)


def test_psycopg_remembers_a_long_statement_with_many_parameters() -> None:
    # A request's last writes are one long statement with many parameters (kit.flush);
    # psycopg parses it once, not on every request (kit.db.remember_long_statements). A
    # psycopg that renames its limits or its cache fails here, not quietly in production.
    create_engine("postgresql://u@h/db")
    names = [f"p{n}" for n in range(60)]
    query = "SELECT " + ", ".join(f"%({name})s" for name in names) + " -- " + "x" * 5000
    params = {name: n for n, name in enumerate(names)}
    before = _queries._query2pg.cache_info()
    for _ in range(2):
        _queries.PostgresQuery(Transformer()).convert(query, params)
    after = _queries._query2pg.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)
