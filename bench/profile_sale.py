"""Where a sale's CPU goes, in-process: ``python -m bench.profile_sale [--sales 300]``.

Drives create + confirm through the ASGI app (httpx's ASGI transport: no sockets, no
uvicorn) with the worker off, on a fresh PostgreSQL database (SQLite with ``--sqlite``).
Prints the CPU per sale without a profiler, the SQL statements per request (counted by an
engine event listener), the CPU of one worker drain of the sales' outbox, and the
profile's hot spots grouped by what they are (middleware, auth, ORM flush, pydantic,
JSON, templates…). The shares come from cProfile, which slows Python code down unevenly:
read them as proportions, and the plain CPU per sale as the number.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
from sqlalchemy import Table, event, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from bench.checkout import ADMIN_KEY, _create_postgres_database, _drop_postgres_database
from stallholder.accounts.models import Creator
from stallholder.app import create_app
from stallholder.events.models import Event
from stallholder.jobs.worker import Worker
from stallholder.kit.clock import SystemClock
from stallholder.kit.db import Database
from stallholder.migrations import upgrade
from stallholder.settings import Settings

# (label, a substring of "file:line(function)" in the profile). Cumulative times overlap
# (a flush runs inside the endpoint), so they are not meant to add up to 100 %.
HOT_SPOTS: list[tuple[str, str]] = [
    ("Idempotency-Key middleware (claim + complete)", "idempotency.py"),
    ("  claim transaction", "(_claim)"),
    ("  complete transaction", "(_complete)"),
    ("auth: API key lookup", "(authenticate)"),
    ("FastAPI request body validation", "(request_body_to_args)"),
    ("FastAPI response serialisation", "(serialize_response)"),
    ("pydantic model_dump (event payloads)", "(model_dump)"),
    ("JSON encode (json.dumps)", "json/__init__.py:183(dumps)"),
    ("JSON decode (json.loads)", "json/__init__.py:299(loads)"),
    ("SQLAlchemy ORM flush", "session.py:4375(flush)"),
    ("SQLAlchemy execute (ORM + Core)", "(execute)"),
    ("SQLAlchemy compile", "(_compiler)"),
    ("greenlet switches (await_only)", "(await_only)"),
    ("psycopg execute", "psycopg/cursor_async.py"),
    ("commit", "(commit)"),
    ("checkout.service.create_session", "checkout/service.py:"),
    ("checkout.service.confirm_session", "(confirm_session)"),
    ("orders.create_paid_order", "(create_paid_order)"),
    ("ledger.post", "ledger/service.py"),
    ("events.emit", "(emit)"),
    ("payments.charge", "(charge)"),
    ("jinja2 render", "jinja2/environment.py"),
]


async def _shop(client: httpx.AsyncClient) -> tuple[str, str, str]:
    creator = await client.post(
        "/v1/creators",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"display_name": "Profile Press", "email": "profile@example.com"},
    )
    key = creator.json()["secret_key"]
    auth = {"Authorization": f"Bearer {key}"}
    product = await client.post(
        "/v1/products",
        headers=auth,
        json={"kind": "digital", "name": "Zine", "status": "published"},
    )
    price = await client.post(
        "/v1/prices",
        headers=auth,
        json={"product": product.json()["id"], "unit_amount": 1500, "currency": "usd"},
    )
    return key, price.json()["id"], creator.json()["id"]


class StatementLog:
    """Every SQL statement the engine sends, tagged with the request it belongs to."""

    def __init__(self) -> None:
        self.current = "setup"
        self.counts: Counter[str] = Counter()
        self.statements: dict[str, list[str]] = {}

    def record(self, statement: str) -> None:
        self.counts[self.current] += 1
        self.statements.setdefault(self.current, []).append(" ".join(statement.split())[:110])


async def _sales(
    client: httpx.AsyncClient,
    key: str,
    price: str,
    count: int,
    log: StatementLog,
    *,
    with_keys: bool = True,
) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    run = uuid.uuid4().hex[:8]

    def keyed(name: str) -> dict[str, str]:
        return {**auth, "Idempotency-Key": f"{run}-{name}"} if with_keys else auth

    for n in range(count):
        log.current = "create"
        created = await client.post(
            "/v1/checkout/sessions",
            headers=keyed(f"c-{n}"),
            json={
                "line_items": [{"price": price, "quantity": 2}],
                "customer_email": f"buyer{n}@example.com",
            },
        )
        assert created.status_code == 201, created.text
        log.current = "confirm"
        confirmed = await client.post(
            f"/v1/checkout/sessions/{created.json()['id']}/confirm",
            headers=keyed(f"f-{n}"),
            json={"payment_method": "tok_visa"},
        )
        assert confirmed.status_code == 200, confirmed.text
        log.current = "other"


def _cpu(run: Callable[[], Awaitable[None]], loop: asyncio.AbstractEventLoop) -> float:
    started = time.process_time()
    loop.run_until_complete(run())
    return time.process_time() - started


LAYERS = [
    ("stallholder", "/stallholder/"),
    ("SQLAlchemy", "/sqlalchemy/"),
    ("psycopg", "/psycopg/"),
    ("aiosqlite + sqlite3", "sqlite"),
    ("asyncio event loop", "/asyncio/"),
    ("FastAPI", "/fastapi/"),
    ("Starlette", "/starlette/"),
    ("pydantic", "pydantic"),
    ("httpx (the test client)", "/httpx/"),
    ("json", "/json/"),
    ("greenlet", "greenlet"),
]


def _layers(profile: cProfile.Profile) -> list[tuple[str, float]]:
    """Own CPU time (tottime) grouped by package: where the instructions run."""
    stats = pstats.Stats(profile)
    entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    totals: Counter[str] = Counter()
    for (filename, _, function), (_, _, own, _, _) in entries.items():
        place = f"{filename} {function}"
        label = next((name for name, needle in LAYERS if needle in place), "other (builtins, C)")
        totals[label] += own
    total = sum(totals.values())
    return [(label, own / total * 100) for label, own in totals.most_common()]


def _hot_spots(profile: cProfile.Profile, sales: int) -> list[tuple[str, float, float]]:
    stats = pstats.Stats(profile)
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for label, needle in HOT_SPOTS:
        cumulative = 0.0
        for (filename, line, function), (_, _, _, cum, _) in entries.items():
            if needle in f"{filename}:{line}({function})":
                cumulative = max(cumulative, cum) if "(" in needle else cumulative + cum
        rows.append((label, cumulative / total * 100, cumulative * 1000 / sales))
    return rows


async def _statement_costs(database: Database, creator_id: str) -> list[tuple[str, float]]:
    """CPU of one statement by each route to the database, 300 of each (setup excluded)."""
    count = 300
    now = datetime.now(UTC)
    table = cast(Table, Event.__table__)
    rows: list[tuple[str, float]] = []

    def row(n: int, kind: str) -> dict[str, Any]:
        return {
            "id": f"evt_{kind[0]}{uuid.uuid4().hex[:30]}",
            "creator_id": creator_id,
            "type": "bench.statement",
            "api_version": "2026-01-01",
            "data": {"n": n},
            "created_at": now,
            "dispatched_at": now,
        }

    async def measure(label: str, body: Callable[[AsyncSession, int], Awaitable[None]]) -> None:
        async with database.unit_of_work() as session:
            await body(session, -1)  # warm: compiled cache, prepared statement
            started = time.process_time()
            for n in range(count):
                await body(session, n)
            rows.append((label, (time.process_time() - started) * 1000 / count))

    async def orm_insert(session: AsyncSession, n: int) -> None:
        session.add(Event(**row(n, "orm")))
        await session.flush()

    async def core_insert(session: AsyncSession, n: int) -> None:
        await session.execute(insert(table).values(**row(n, "core")))

    async def core_insert_five(session: AsyncSession, n: int) -> None:
        await session.execute(insert(table), [row(n * 10 + i, "many") for i in range(5)])

    async def core_select(session: AsyncSession, n: int) -> None:
        await session.execute(select(table.c.type).where(table.c.id == "evt_missing"))

    async def orm_get(session: AsyncSession, n: int) -> None:
        session.expunge_all()
        await session.get(Creator, creator_id)

    await measure("ORM: session.add(Event) + flush (one INSERT)", orm_insert)
    await measure("Core: insert(events).values(...) (one INSERT)", core_insert)
    await measure("Core: one executemany of 5 rows (insertmanyvalues)", core_insert_five)
    await measure("Core: select one column by primary key", core_select)
    await measure("ORM: session.get(Creator) of an unloaded row", orm_get)
    started = time.process_time()
    for _ in range(count):
        async with database.unit_of_work() as session:
            await session.execute(select(table.c.type).where(table.c.id == "evt_missing"))
    per = (time.process_time() - started) * 1000 / count
    rows.append(("a unit of work with one SELECT (BEGIN, SELECT, COMMIT)", per))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sales", type=int, default=300)
    parser.add_argument("--sqlite", action="store_true")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument(
        "--without-keys", action="store_true", help="no Idempotency-Key headers (its cost)"
    )
    parser.add_argument(
        "--statements", action="store_true", help="also the CPU of single statements"
    )
    parser.add_argument("--uvloop", action="store_true", help="uvloop's event loop (as served)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stallholder-profile-") as tmp:
        created = None
        if arguments.sqlite:
            url = f"sqlite:///{Path(tmp) / 'profile.db'}"
        else:
            created = _create_postgres_database()
            if created is None:
                raise SystemExit("PostgreSQL is not reachable")
            url = created[0]
        try:
            _profile(
                url,
                Path(tmp),
                arguments.sales,
                arguments.top,
                with_keys=not arguments.without_keys,
                statements=arguments.statements,
                use_uvloop=arguments.uvloop,
            )
        finally:
            if created is not None:
                _drop_postgres_database(created[1])


def _profile(
    url: str,
    workdir: Path,
    sales: int,
    top: int,
    *,
    with_keys: bool,
    statements: bool,
    use_uvloop: bool,
) -> None:
    upgrade(url)
    settings = Settings(
        database_url=url, admin_key=ADMIN_KEY, data_dir=workdir / "var", embedded_worker=False
    )
    database = Database(url)
    log = StatementLog()
    event.listen(
        database.engine.sync_engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, *_: log.record(statement),
    )
    app = create_app(settings, database=database, run_worker=False)
    transport = httpx.ASGITransport(app=app)
    client = httpx.AsyncClient(transport=transport, base_url="http://bench")
    loop: asyncio.AbstractEventLoop
    if use_uvloop:
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    key, price, creator_id = loop.run_until_complete(_shop(client))
    worker = Worker(database, SystemClock(), settings=settings, gateway=app.state.gateway)

    async def drain() -> None:
        for _ in range(1000):
            if not await worker.run_once():
                break

    loop.run_until_complete(_sales(client, key, price, 20, log))  # warm-up: caches, pools
    loop.run_until_complete(drain())
    log.counts.clear()
    log.statements.clear()

    cpu = _cpu(lambda: _sales(client, key, price, sales, log, with_keys=with_keys), loop)
    per_request = {name: log.counts[name] / sales for name in ("create", "confirm")}
    drain_cpu = _cpu(drain, loop)
    keys = "with" if with_keys else "without"
    print(
        f"database: {url.split('://')[0]}; {sales} sales through the ASGI app, worker off, "
        f"{keys} Idempotency-Key headers, {type(loop).__module__} event loop"
    )
    print(f"CPU per sale (create + confirm, no profiler): {cpu * 1000 / sales:.2f} ms")
    print(f"CPU of the worker draining their outbox: {drain_cpu * 1000 / sales:.2f} ms per sale")
    print(f"SQL statements per sale: {per_request} (worker drain: {log.counts['other']})")
    for name in ("create", "confirm"):
        print(f"-- {name}: the statements of the last one")
        per = int(per_request[name])
        for statement in log.statements[name][-per:]:
            print(f"   {statement}")

    profile = cProfile.Profile(time.process_time)  # CPU, not wall time spent waiting
    profile.enable()
    loop.run_until_complete(_sales(client, key, price, sales, log, with_keys=with_keys))
    profile.disable()
    print("\nown CPU by layer (cProfile tottime):")
    for label, share in _layers(profile):
        print(f"  {label:<30} {share:5.1f} %")
    print("\nhot spots (cumulative, cProfile; they overlap):")
    for label, share, ms in _hot_spots(profile, sales):
        print(f"  {label:<50} {share:5.1f} %  {ms:6.2f} ms/sale (profiled)")
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(top)
    print(out.getvalue())
    drain_profile = cProfile.Profile(time.process_time)
    drain_profile.enable()
    loop.run_until_complete(drain())
    drain_profile.disable()
    print("worker drain of those sales, own CPU by layer (cProfile tottime):")
    for label, share in _layers(drain_profile):
        print(f"  {label:<30} {share:5.1f} %")
    out = io.StringIO()
    drain_stats = pstats.Stats(drain_profile, stream=out).sort_stats("cumulative")
    drain_stats.print_stats("stallholder", top)
    print(out.getvalue())
    if statements:
        for label, ms in loop.run_until_complete(_statement_costs(database, creator_id)):
            print(f"  {label:<62} {ms:6.3f} ms CPU")
    loop.run_until_complete(client.aclose())
    loop.run_until_complete(database.dispose())
    loop.close()


if __name__ == "__main__":
    main()
