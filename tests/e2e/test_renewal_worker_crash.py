"""Kill the real worker (``stallholder worker`` in a subprocess) with SIGKILL at least 20
times at random moments of a renewal run, then let one finish: every due invoice is
charged exactly once per attempt key at the gateway (the sandbox's ``sandbox_charges``),
at most once successfully, invoices, orders and subscriptions agree, nothing is left half
done, and ``stallholder ledger verify`` exits 0, on SQLite and PostgreSQL.

The subscriptions are seeded in bulk (``bench.renewals.seed_due_renewals``): monthly $3
plans due for renewal now, one customer in five with ``tok_chargeCustomerFail`` whose
renewal is eight days overdue, so every dunning retry is due at once and those
subscriptions go through dunning to the end (five failed attempts, then canceled as
involuntary churn) while the worker is being killed.

The kill moments are random but seeded (``STALLHOLDER_KILL_SEED``, printed on failure):
each worker is killed a uniform random time after its first effect (an invoice or a
payment attempt recorded), so every kill lands inside the run, between or inside the
steps of renewals and charges, however long the process took to start. A killed
worker's leases would end after five minutes; the test ends them at once (as time
passing would), so the next worker takes the work over.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from bench.renewals import UNIT_AMOUNT, billing_work_due, seed_due_renewals
from sqlalchemy import func, select, update

from stallholder.billing.models import Invoice, Subscription
from stallholder.kit import work
from stallholder.kit.db import Database
from stallholder.orders.models import Order
from stallholder.payments.gateway import SandboxGateway
from stallholder.payments.models import PaymentAttempt, SandboxCharge
from stallholder.payments.sandbox import DatabaseChargeStore
from tests.conftest import ADMIN_KEY

pytestmark = pytest.mark.anyio

SEED = int(os.environ.get("STALLHOLDER_KILL_SEED", "20261130"))
KILLS = 20
SUBSCRIPTIONS = 250
CUSTOMERS = 10
FAILING_EVERY = 5  # customers 0 and 5 of 10 save a card that always fails
ATTEMPTS_UNTIL_CANCELED = 5  # the first attempt and the default retries at +1, +3, +5, +7 days
# Each worker is killed this long (seconds, uniform) after its first effect.
KILL_AFTER = (0.0, 0.2)
STALLHOLDER = Path(sys.executable).with_name("stallholder")


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


def _env(database_url: str, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "STALLHOLDER_DATABASE_URL": database_url,
        "STALLHOLDER_DATA_DIR": str(data_dir),
        "STALLHOLDER_ADMIN_KEY": ADMIN_KEY,
        "STALLHOLDER_WORKER_POLL_SECONDS": "0.2",
        # A charge left between its gateway call and its outcome is settled soon.
        "STALLHOLDER_PAYMENT_RESOLVE_AFTER_SECONDS": "1",
    }


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(  # noqa: S603 - our own command
            [str(STALLHOLDER), "worker"], env=env, stdout=output, stderr=subprocess.STDOUT
        )


def _tail(log: Path) -> str:
    return log.read_text()[-5000:]


async def _effects(database: Database) -> int:
    """Invoices and payment attempts recorded so far."""
    async with database.unit_of_work() as session:
        invoices = (await session.execute(select(func.count(Invoice.id)))).scalar_one()
        attempts = (await session.execute(select(func.count(PaymentAttempt.id)))).scalar_one()
    return int(invoices) + int(attempts)


async def _wait_for_an_effect(
    database: Database, process: subprocess.Popen[bytes], log: Path, *, before: int
) -> None:
    deadline = time.monotonic() + 120
    while await _effects(database) == before:
        assert process.poll() is None, _tail(log)
        assert time.monotonic() < deadline, "the worker did nothing within 120 s"
        await asyncio.sleep(0.05)


async def _end_leases(database: Database) -> None:
    """What a killed worker had claimed is due again, as when its leases run out."""
    async with database.unit_of_work() as session:
        await session.execute(
            update(work.WorkItem)
            .where(work.WorkItem.state == work.RUNNING)
            .values(due_at=datetime.now(UTC))
        )


async def _settled(database: Database) -> bool:
    """No billing work is due and no charge is left between its steps."""
    if await billing_work_due(database, now=datetime.now(UTC)):
        return False
    async with database.unit_of_work() as session:
        processing = (
            await session.execute(
                select(func.count())
                .select_from(PaymentAttempt)
                .where(PaymentAttempt.status == "processing")
            )
        ).scalar_one()
    return processing == 0


async def test_killing_the_worker_during_renewals_charges_each_invoice_once(
    database: Database, database_url: str, tmp_path: Path
) -> None:
    print(f"STALLHOLDER_KILL_SEED={SEED}")  # pytest shows it when the test fails
    draw = random.Random(SEED)
    seeded = await seed_due_renewals(
        database,
        SandboxGateway(DatabaseChargeStore(database)),
        count=SUBSCRIPTIONS,
        now=datetime.now(UTC),
        customers=CUSTOMERS,
        failing_every=FAILING_EVERY,
    )
    assert len(seeded.failing_ids) == SUBSCRIPTIONS // FAILING_EVERY
    env = _env(database_url, tmp_path / "var")

    progress: list[int] = []
    started = time.monotonic()
    for kill in range(KILLS):
        log = tmp_path / f"worker-{kill}.log"
        before = await _effects(database)
        process = _start_worker(env, log)
        try:
            await _wait_for_an_effect(database, process, log, before=before)
            await asyncio.sleep(draw.uniform(*KILL_AFTER))
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        assert process.returncode == -signal.SIGKILL, "the worker ended before it was killed"
        await _end_leases(database)
        progress.append(await _effects(database))
    # Every kill came during the run: work was still due after the last one.
    assert await billing_work_due(database, now=datetime.now(UTC)) > 0, progress

    print(f"{KILLS} kills after {time.monotonic() - started:.1f} s; effects {progress}")
    log = tmp_path / "worker-final.log"
    final = _start_worker(env, log)
    try:
        deadline = time.monotonic() + 240
        while not await _settled(database):
            assert final.poll() is None, _tail(log)
            assert time.monotonic() < deadline, "the final worker did not finish in 240 s"
            await asyncio.sleep(0.2)
    finally:
        final.terminate()
        final.wait(timeout=30)

    print(f"finished after {time.monotonic() - started:.1f} s")
    async with database.unit_of_work() as session:
        invoices = (await session.execute(select(Invoice))).scalars().all()
        subscriptions = {
            s.id: s for s in (await session.execute(select(Subscription))).scalars().all()
        }
        charges = (await session.execute(select(SandboxCharge))).scalars().all()
        orders = (await session.execute(select(Order))).scalars().all()
        attempts = (
            await session.execute(select(PaymentAttempt.purpose_id, PaymentAttempt.attempt_number))
        ).all()
        dead = (
            await session.execute(
                select(work.WorkItem.kind, work.WorkItem.last_error).where(
                    work.WorkItem.state == work.DEAD
                )
            )
        ).all()

    assert dead == []
    # One invoice per subscription, for period 1.
    assert sorted(i.subscription_id for i in invoices) == sorted(seeded.subscription_ids)
    assert {i.period_index for i in invoices} == {1}
    by_id = {i.id: i for i in invoices}
    # The gateway was asked for exactly the attempts each invoice made, one charge per key.
    assert sorted(c.idempotency_key for c in charges) == sorted(
        f"{i.id}:attempt:{n}" for i in invoices for n in range(1, i.attempt_count + 1)
    )
    assert max(Counter(attempts).values()) == 1
    assert len(attempts) == len(charges)
    successes = Counter(
        c.idempotency_key.rsplit(":attempt:", 1)[0] for c in charges if c.status == "succeeded"
    )
    assert set(successes.values()) == {1}
    assert {c.amount for c in charges} == {UNIT_AMOUNT}
    for invoice in invoices:
        subscription = subscriptions[invoice.subscription_id]
        if invoice.subscription_id in seeded.failing_ids:
            assert (invoice.status, invoice.amount_paid, invoice.attempt_count) == (
                "uncollectible",
                0,
                ATTEMPTS_UNTIL_CANCELED,
            )
            assert (subscription.status, subscription.churn) == ("canceled", "involuntary")
            assert invoice.id not in successes
        else:
            assert (invoice.status, invoice.amount_paid, invoice.attempt_count) == (
                "paid",
                UNIT_AMOUNT,
                1,
            )
            assert subscription.status == "active"
            assert successes[invoice.id] == 1
    # One order per paid invoice, for its amount; none for the others.
    assert sorted(o.invoice_id or "" for o in orders) == sorted(
        i.id for i in invoices if i.status == "paid"
    )
    assert {o.id for o in orders} == {by_id[o.invoice_id or ""].order_id for o in orders}

    verify = await asyncio.create_subprocess_exec(
        str(STALLHOLDER),
        "ledger",
        "verify",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(verify.communicate(), timeout=120)
    assert verify.returncode == 0, output.decode()
