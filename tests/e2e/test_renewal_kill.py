"""Kill a real worker (``stallholder worker`` in a process of its own, forked from one that
imported Stallholder once: ``tests/forked.py``) with SIGKILL at random
moments during a renewal run, 20 times, then let one finish: every due invoice is made
once and charged once at the gateway (the sandbox's own record of charges, by key), one
order each, and ``ledger verify`` is clean, on SQLite and PostgreSQL (ADR 0010).

The kill points are random but seeded (``STALLHOLDER_KILL_SEED``); each kill lands a
uniform moment after the worker said it started, while renewals and charges run. A
killed worker's claimed work is taken over when its lease (1 s here) ends.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from stallholder.accounts import service as accounts
from stallholder.billing import tasks
from stallholder.billing.models import Invoice
from stallholder.kit import work
from stallholder.kit.db import Database
from stallholder.ledger import service as ledger
from stallholder.orders.models import Order
from stallholder.payments.gateway import SandboxGateway
from stallholder.payments.models import SandboxCharge
from stallholder.payments.sandbox import DatabaseChargeStore
from stallholder.settings import Settings
from tests import factories
from tests.forked import ForkedCommand

SEED = int(os.environ.get("STALLHOLDER_KILL_SEED", "20261130"))
KILLS = 20
SUBSCRIPTIONS = 8
RENEWALS = 3  # each subscription started 95 days ago: periods 1, 2 and 3 are due


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


async def _setup(url: str, started: datetime) -> None:
    database = Database(url)
    gateway = SandboxGateway(DatabaseChargeStore(database))
    policy = tasks.policy_from(Settings(database_url=url))
    try:
        async with database.unit_of_work() as session:
            creator = await factories.create_creator(session, now=started)
            price = await factories.create_plan(session, creator_id=creator.id, now=started)
        for n in range(SUBSCRIPTIONS):
            async with database.unit_of_work() as session:
                customer = await accounts.create_customer(
                    session,
                    creator_id=creator.id,
                    email=f"reader{n}@example.com",
                    name=None,
                    time_zone=["Europe/Berlin", "Pacific/Auckland", "America/New_York"][n % 3],
                    now=started,
                )
            _, first = await factories.subscribe(
                database,
                gateway,
                creator_id=creator.id,
                customer_id=customer.id,
                price_id=price.id,
                policy=policy,
                now=started,
            )
            assert first is not None
    finally:
        await database.dispose()


class WorkerProcess:
    def __init__(self, *, database_url: str, data_dir: Path) -> None:
        env = {
            **os.environ,
            "STALLHOLDER_DATABASE_URL": database_url,
            "STALLHOLDER_DATA_DIR": str(data_dir),
            "STALLHOLDER_BILLING_WORK_LEASE_SECONDS": "1",
            "STALLHOLDER_PAYMENT_RESOLVE_AFTER_SECONDS": "1",
            "STALLHOLDER_WORKER_POLL_SECONDS": "0.3",
            "STALLHOLDER_WORKER_RETRY_JITTER": "0",
        }
        self.log = data_dir / "worker.log"
        self.command = ForkedCommand(["worker"], env=env, log=self.log)
        self.starts = 0

    def start(self) -> None:
        """Start the worker and return once it says it runs."""
        self.command.start()
        self.starts += 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.log.read_bytes().count(b"worker started") >= self.starts:
                return
            assert self.command.running(), self.log.read_text()[-3000:]
            time.sleep(0.02)
        pytest.fail(f"the worker did not start:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        self.command.kill()

    def stop(self) -> None:
        self.command.stop(signal.SIGINT, timeout=20)


async def _state(url: str) -> tuple[int, int, int, int, int, bool, int]:
    database = Database(url)
    try:
        async with database.unit_of_work() as session:

            async def count(statement: object) -> int:
                return int((await session.execute(statement)).scalar_one())  # type: ignore[call-overload]

            invoices = await count(select(func.count()).select_from(Invoice))
            paid = await count(
                select(func.count()).select_from(Invoice).where(Invoice.status == "paid")
            )
            charges = await count(select(func.count()).select_from(SandboxCharge))
            asked_again = await count(
                select(func.count()).select_from(SandboxCharge).where(SandboxCharge.calls > 1)
            )
            orders = await count(select(func.count()).select_from(Order))
            clean = (await ledger.verify(session)).is_clean
            dead = await count(
                select(func.count())
                .select_from(work.WorkItem)
                .where(work.WorkItem.state == work.DEAD)
            )
            return invoices, paid, charges, asked_again, orders, clean, dead
    finally:
        await database.dispose()


def test_every_due_invoice_is_charged_once_however_the_worker_dies(
    database_url: str, tmp_path: Path
) -> None:
    started = datetime.now(UTC) - timedelta(days=95)
    asyncio.run(_setup(database_url, started))
    expected = SUBSCRIPTIONS * (1 + RENEWALS)
    rng = random.Random(SEED)
    worker = WorkerProcess(database_url=database_url, data_dir=tmp_path / "var")
    try:
        for _ in range(KILLS):
            worker.start()
            time.sleep(rng.uniform(0.0, 0.5))
            worker.kill()
        worker.start()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            invoices, paid, *_ = asyncio.run(_state(database_url))
            if invoices == expected and paid == expected:
                break
            time.sleep(0.5)
    finally:
        worker.stop()
    invoices, paid, charges, _, orders, clean, dead = asyncio.run(_state(database_url))
    assert (invoices, paid, charges, orders, dead) == (expected, expected, expected, expected, 0)
    assert clean
