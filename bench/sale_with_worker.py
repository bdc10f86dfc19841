"""A sale's CPU in-process with the worker running beside the sales, as ``stallholder
serve`` embeds it: ``python -m bench.sale_with_worker [--sales 150] [--clients 8]``.

Drives create + confirm through the ASGI app (no sockets, no uvicorn) from ``--clients``
concurrent clients while a ``Worker`` runs in the same event loop (uvloop), then waits
until the outbox is dispatched and every email sent. Prints the process's CPU per sale
(requests and worker together, no profiler) and the SQL statements per sale by source
(create, confirm, worker), counted exactly: the statement counts are the repeatable
number on a shared machine, the CPU is not. ``--show worker`` (or ``create``,
``confirm``) lists that source's statements; ``--profile FILE`` writes a cProfile of the
measured sales and their drain.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import cProfile
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import uvloop
from sqlalchemy import event, func, select

from bench.checkout import ADMIN_KEY, _create_postgres_database, _drop_postgres_database
from bench.profile_sale import _shop
from stallholder.app import create_app
from stallholder.events.models import Event
from stallholder.jobs.worker import Worker
from stallholder.kit import work
from stallholder.kit.clock import SystemClock
from stallholder.kit.db import Database
from stallholder.migrations import upgrade
from stallholder.notifications.service import SEND_KIND
from stallholder.settings import Settings

_source: contextvars.ContextVar[str] = contextvars.ContextVar("source", default="other")


class Statements:
    """Every statement the engine sends, counted by the task's source."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.texts: dict[str, list[str]] = {}

    def record(self, statement: str) -> None:
        source = _source.get()
        self.counts[source] += 1
        self.texts.setdefault(source, []).append(" ".join(statement.split())[:90])

    def clear(self) -> None:
        self.counts.clear()
        self.texts.clear()


async def _sales(
    client: httpx.AsyncClient, key: str, price: str, *, count: int, clients: int
) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    run = uuid.uuid4().hex[:8]
    numbers = iter(range(count))

    async def one_client() -> None:
        for n in numbers:
            _source.set("create")
            created = await client.post(
                "/v1/checkout/sessions",
                headers={**auth, "Idempotency-Key": f"{run}-c{n}"},
                json={
                    "line_items": [{"price": price, "quantity": 2}],
                    "customer_email": f"b{run}{n}@example.com",
                },
            )
            assert created.status_code == 201, created.text
            _source.set("confirm")
            confirmed = await client.post(
                f"/v1/checkout/sessions/{created.json()['id']}/confirm",
                headers={**auth, "Idempotency-Key": f"{run}-f{n}"},
                json={"payment_method": "tok_visa"},
            )
            assert confirmed.status_code == 200, confirmed.text

    await asyncio.gather(*(one_client() for _ in range(clients)))


async def _until_drained(database: Database) -> None:
    """Until every event is dispatched and every email sent."""
    while True:
        async with database.read() as session:
            undispatched = (
                await session.execute(
                    select(func.count()).select_from(Event).where(Event.dispatched_at.is_(None))
                )
            ).scalar_one()
            sending = (
                await session.execute(
                    select(func.count())
                    .select_from(work.WorkItem)
                    .where(work.WorkItem.kind == SEND_KIND)
                )
            ).scalar_one()
        if not undispatched and not sending:
            return
        await asyncio.sleep(0.05)


def _measure(url: str, workdir: Path, arguments: argparse.Namespace) -> None:
    upgrade(url)
    settings = Settings(
        database_url=url, admin_key=ADMIN_KEY, data_dir=workdir / "var", embedded_worker=False
    )
    database = Database(url)
    statements = Statements()

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        statements.record(statement)

    event.listen(database.engine.sync_engine, "before_cursor_execute", on_execute)
    app = create_app(settings, database=database, run_worker=False)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench")
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    key, price, _creator = loop.run_until_complete(_shop(client))
    worker = Worker(database, SystemClock(), settings=settings, gateway=app.state.gateway)

    async def run_worker() -> None:
        _source.set("worker")
        await worker.run()

    running = loop.create_task(run_worker())
    # Warm-up: caches, pools, prepared statements.
    loop.run_until_complete(_sales(client, key, price, count=30, clients=arguments.clients))
    loop.run_until_complete(_until_drained(database))
    statements.clear()
    profile = cProfile.Profile(time.process_time) if arguments.profile else None
    if profile is not None:
        profile.enable()
    started, wall = time.process_time(), time.monotonic()
    loop.run_until_complete(
        _sales(client, key, price, count=arguments.sales, clients=arguments.clients)
    )
    sold = time.process_time()
    loop.run_until_complete(_until_drained(database))
    drained = time.process_time()
    if profile is not None:
        profile.disable()
        profile.dump_stats(arguments.profile)
    sales = arguments.sales
    print(
        f"{url.split(':')[0]}: {sales} sales from {arguments.clients} clients with the "
        f"worker running, {time.monotonic() - wall:.1f} s"
    )
    print(
        f"CPU per sale: {(drained - started) * 1000 / sales:.2f} ms (while selling "
        f"{(sold - started) * 1000 / sales:.2f}, draining after the last sale "
        f"{(drained - sold) * 1000 / sales:.2f})"
    )
    per_sale = {source: round(n / sales, 2) for source, n in sorted(statements.counts.items())}
    print(f"statements per sale: {per_sale}")
    for source in arguments.show:
        print(f"{source}'s statements per sale:")
        texts = statements.texts.get(source, [])
        for statement, n in Counter(s[:70] for s in texts).most_common(40):
            print(f"  {n / sales:6.2f}  {statement}")
    worker.stop()
    loop.run_until_complete(running)
    loop.run_until_complete(client.aclose())
    loop.run_until_complete(database.dispose())
    loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sales", type=int, default=150)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--sqlite", action="store_true")
    parser.add_argument(
        "--show",
        action="append",
        default=[],
        choices=["create", "confirm", "worker", "other"],
        help="list that source's statements, most frequent first (may be repeated)",
    )
    parser.add_argument("--profile", metavar="FILE", default=None)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stallholder-sale-worker-") as tmp:
        created = None
        if arguments.sqlite:
            url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        else:
            created = _create_postgres_database()
            if created is None:
                raise SystemExit("PostgreSQL is not reachable")
            url = created[0]
        try:
            _measure(url, Path(tmp), arguments)
        finally:
            if created is not None:
                _drop_postgres_database(created[1])


if __name__ == "__main__":
    main()
