"""Kill a real worker (``stallholder worker`` in a subprocess) with SIGKILL at random
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
import subprocess
import sys
import threading
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

SEED = int(os.environ.get("STALLHOLDER_KILL_SEED", "20261130"))
KILLS = 20
SUBSCRIPTIONS = 8
RENEWALS = 3  # each subscription started 95 days ago: periods 1, 2 and 3 are due
STALLHOLDER = Path(sys.executable).with_name("stallholder")


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
        self.env = {
            **os.environ,
            "STALLHOLDER_DATABASE_URL": database_url,
            "STALLHOLDER_DATA_DIR": str(data_dir),
            "STALLHOLDER_BILLING_WORK_LEASE_SECONDS": "1",
            "STALLHOLDER_PAYMENT_RESOLVE_AFTER_SECONDS": "1",
            "STALLHOLDER_WORKER_POLL_SECONDS": "0.3",
            "STALLHOLDER_WORKER_RETRY_JITTER": "0",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.watcher: threading.Thread | None = None

    def start(self) -> None:
        """Start the worker and return once it says it runs."""
        self.process = subprocess.Popen(  # noqa: S603
            [str(STALLHOLDER), "worker"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        started = threading.Event()
        stream = self.process.stderr
        assert stream is not None

        def watch() -> None:
            for line in iter(stream.readline, b""):
                if b"worker started" in line:
                    started.set()

        self.watcher = threading.Thread(target=watch, daemon=True)
        self.watcher.start()
        assert started.wait(60), "the worker did not start"

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._close()

    def _close(self) -> None:
        assert self.process is not None
        if self.watcher is not None:
            self.watcher.join(10)
        if self.process.stderr is not None:
            self.process.stderr.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
                return
            self._close()


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
