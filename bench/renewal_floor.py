"""The renewal floor: the least the worker's renewals can cost on Stallholder's stack.

The same rows a Stallholder renewal writes (counted from PostgreSQL's ``pg_stat_user_tables``
over a run: about 19 inserts, 13 updates and 2 deletes per renewal), written set-based:
async SQLAlchemy Core over the same engine (``kit.db.create_engine``), one connection,
batches of ``BATCH`` renewals, each step a few multi-row statements. Per renewal:

    renew   the work item claimed (update) and deleted · the subscription locked, read and
            its period moved on (update) · an invoice and its line · two events · the
            charge's and the next renewal's work items
    charge  the work item claimed and deleted · the attempt (insert, then its outcome) ·
            the invoice opened, then paid (two updates) · the gateway's charge under its
            idempotency key, in a transaction of its own · the receipt number · an order
            and its line · a journal transaction and its four lines · the four balances
            (one upsert per account for the whole batch) · two events · the receipt
            email's work item
    outbox  the four events marked dispatched

No ORM, no domain rules (periods are a fixed month, the amounts fixed), no event presenters,
no email rendered or sent, no gateway client: whatever the worker spends beyond this is
what the benchmark's ratio shows. Its own tables (``renewal_floor_*``) live in the
benchmark's database beside Stallholder's.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from stallholder.kit.db import create_engine

# Renewals per batch: each step of a batch is one transaction.
BATCH = 500
AMOUNT = 300
PROCESSOR_FEE = 39
PLATFORM_FEE = 15
CREATOR = "cr_renewal_floor"
CURRENCY = "usd"
RENEW, CHARGE, EMAIL = "renew", "charge", "email"

metadata = MetaData()


def _id() -> Column[str]:
    return Column("id", String(40), primary_key=True)


def _at(name: str, *, nullable: bool = False) -> Column[datetime]:
    return Column(name, DateTime(timezone=True), nullable=nullable)


def _amount(name: str) -> Column[int]:
    return Column(name, BigInteger, nullable=False)


subscriptions = Table(
    "renewal_floor_subscriptions",
    metadata,
    _id(),
    Column("customer_id", String(40), nullable=False),
    Column("payment_method", String(40), nullable=False),
    _amount("amount"),
    _at("period_start"),
    _at("period_end"),
)
work_items = Table(
    "renewal_floor_work",
    metadata,
    _id(),
    Column("kind", String(20), nullable=False),
    Column("state", String(10), nullable=False),
    _at("due_at"),
    Column("subject", String(40), nullable=False),
    _at("leased_until", nullable=True),
)
invoices = Table(
    "renewal_floor_invoices",
    metadata,
    _id(),
    Column("subscription_id", String(40), nullable=False),
    Column("status", String(20), nullable=False),
    _at("period_start"),
    _at("period_end"),
    _amount("amount_due"),
    _amount("amount_paid"),
    Column("attempt_count", Integer, nullable=False),
    _at("created_at"),
)
invoice_lines = Table(
    "renewal_floor_invoice_lines",
    metadata,
    _id(),
    Column("invoice_id", String(40), nullable=False, index=True),
    _amount("amount"),
    Column("description", String(200), nullable=False),
)
attempts = Table(
    "renewal_floor_attempts",
    metadata,
    _id(),
    Column("invoice_id", String(40), nullable=False, index=True),
    Column("idempotency_key", String(80), nullable=False, unique=True),
    Column("status", String(20), nullable=False),
    _amount("amount"),
    _at("created_at"),
)
gateway_charges = Table(
    "renewal_floor_gateway_charges",
    metadata,
    Column("idempotency_key", String(80), primary_key=True),
    Column("payment_method", String(40), nullable=False),
    _amount("amount"),
    Column("status", String(20), nullable=False),
)
counters = Table(
    "renewal_floor_counters",
    metadata,
    Column("creator_id", String(40), primary_key=True),
    Column("next_receipt", BigInteger, nullable=False),
)
orders = Table(
    "renewal_floor_orders",
    metadata,
    _id(),
    Column("invoice_id", String(40), nullable=False, unique=True),
    Column("receipt_number", BigInteger, nullable=False),
    _amount("amount_total"),
    _at("created_at"),
)
order_lines = Table(
    "renewal_floor_order_lines",
    metadata,
    _id(),
    Column("order_id", String(40), nullable=False, index=True),
    _amount("amount"),
    Column("quantity", Integer, nullable=False),
)
journal_transactions = Table(
    "renewal_floor_journal_transactions",
    metadata,
    _id(),
    Column("source", String(40), nullable=False, unique=True),
    _at("created_at"),
)
journal_lines = Table(
    "renewal_floor_journal_lines",
    metadata,
    _id(),
    Column("transaction_id", String(40), nullable=False, index=True),
    Column("account", String(80), nullable=False),
    _amount("amount"),
)
balances = Table(
    "renewal_floor_balances",
    metadata,
    Column("account", String(80), primary_key=True),
    _amount("amount"),
)
events = Table(
    "renewal_floor_events",
    metadata,
    _id(),
    Column("type", String(60), nullable=False),
    Column("data", Text, nullable=False),
    _at("created_at"),
    _at("dispatched_at", nullable=True),
)

# A payment's journal lines: (account, amount); they sum to zero.
POSTING = (
    ("platform:cash", AMOUNT - PROCESSOR_FEE),
    ("platform:processor_fees", PROCESSOR_FEE),
    (f"creator:{CREATOR}:payable", -(AMOUNT - PLATFORM_FEE)),
    ("platform:revenue", -PLATFORM_FEE),
)


def _new(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


async def seed(connection: AsyncConnection, *, count: int, now: datetime) -> None:
    """``count`` subscriptions whose renewal is due at ``now``, and the receipt counter."""
    await connection.run_sync(metadata.drop_all)
    await connection.run_sync(metadata.create_all)
    rows = [
        {
            "id": _new("sub"),
            "customer_id": _new("cus"),
            "payment_method": _new("pm"),
            "amount": AMOUNT,
            "period_start": now - timedelta(days=30),
            "period_end": now,
        }
        for _ in range(count)
    ]
    await connection.execute(insert(subscriptions), rows)
    await connection.execute(
        insert(work_items),
        [
            {
                "id": _new("wrk"),
                "kind": RENEW,
                "state": "queued",
                "due_at": now,
                "subject": row["id"],
            }
            for row in rows
        ],
    )
    await connection.execute(insert(counters).values(creator_id=CREATOR, next_receipt=1))


async def _claim(
    connection: AsyncConnection, kind: str, now: datetime, batch: int
) -> list[tuple[str, str]]:
    """Lease up to ``batch`` due work items of ``kind`` in a transaction of their own:
    (work id, subject)."""
    async with connection.begin():
        due = (
            select(work_items.c.id)
            .where(work_items.c.kind == kind, work_items.c.state == "queued")
            .where(work_items.c.due_at <= now)
            .order_by(work_items.c.due_at, work_items.c.id)
            .limit(batch)
        )
        if connection.dialect.name == "postgresql":
            due = due.with_for_update(skip_locked=True)
        claimed = await connection.execute(
            update(work_items)
            .where(work_items.c.id.in_(due.scalar_subquery()))
            .values(state="leased", leased_until=now + timedelta(minutes=5))
            .returning(work_items.c.id, work_items.c.subject)
        )
        return [(row.id, row.subject) for row in claimed]


def _event(kind: str, subject: str, now: datetime) -> dict[str, Any]:
    data = json.dumps({"object": subject, "type": kind, "created": int(now.timestamp())})
    return {"id": _new("evt"), "type": kind, "data": data, "created_at": now}


async def _renew(
    connection: AsyncConnection, claimed: list[tuple[str, str]], now: datetime
) -> None:
    ids = sorted(subject for _, subject in claimed)
    async with connection.begin():
        locked = (
            select(subscriptions).where(subscriptions.c.id.in_(ids)).order_by(subscriptions.c.id)
        )
        if connection.dialect.name == "postgresql":
            locked = locked.with_for_update()
        rows = (await connection.execute(locked)).all()
        new_invoices, lines, moved, made, queued = [], [], [], [], []
        for row in rows:
            start, end = row.period_end, row.period_end + timedelta(days=30)
            invoice = _new("in")
            new_invoices.append(
                {
                    "id": invoice,
                    "subscription_id": row.id,
                    "status": "draft",
                    "period_start": start,
                    "period_end": end,
                    "amount_due": row.amount,
                    "amount_paid": 0,
                    "attempt_count": 0,
                    "created_at": now,
                }
            )
            lines.append(
                {
                    "id": _new("il"),
                    "invoice_id": invoice,
                    "amount": row.amount,
                    "description": "1 x plan",
                }
            )
            moved.append({"row_id": row.id, "start": start, "end": end})
            made += [
                _event("invoice.created", invoice, now),
                _event("customer.subscription.updated", row.id, now),
            ]
            queued += [
                {
                    "id": _new("wrk"),
                    "kind": CHARGE,
                    "state": "queued",
                    "due_at": now,
                    "subject": invoice,
                },
                {
                    "id": _new("wrk"),
                    "kind": RENEW,
                    "state": "queued",
                    "due_at": end,
                    "subject": row.id,
                },
            ]
        await connection.execute(insert(invoices), new_invoices)
        await connection.execute(insert(invoice_lines), lines)
        await connection.execute(
            update(subscriptions)
            .where(subscriptions.c.id == bindparam("row_id"))
            .values(period_start=bindparam("start"), period_end=bindparam("end")),
            moved,
        )
        await connection.execute(insert(events), made)
        await connection.execute(insert(work_items), queued)
        await connection.execute(
            delete(work_items).where(work_items.c.id.in_([id_ for id_, _ in claimed]))
        )


async def _charge(
    connection: AsyncConnection, claimed: list[tuple[str, str]], now: datetime
) -> None:
    invoice_ids = sorted(subject for _, subject in claimed)
    # Step 1: the attempts recorded and the invoices opened.
    async with connection.begin():
        rows = (
            await connection.execute(
                select(invoices.c.id, invoices.c.amount_due, subscriptions.c.payment_method)
                .join(subscriptions, subscriptions.c.id == invoices.c.subscription_id)
                .where(invoices.c.id.in_(invoice_ids))
                .order_by(invoices.c.id)
            )
        ).all()
        made = [
            {
                "id": _new("pa"),
                "invoice_id": row.id,
                "idempotency_key": f"{row.id}:attempt:1",
                "status": "pending",
                "amount": row.amount_due,
                "created_at": now,
            }
            for row in rows
        ]
        await connection.execute(insert(attempts), made)
        await connection.execute(
            update(invoices)
            .where(invoices.c.id.in_(invoice_ids))
            .values(status="open", attempt_count=invoices.c.attempt_count + 1)
        )
    # Step 2: the gateway's own record of each charge, under its key.
    async with connection.begin():
        await connection.execute(
            insert(gateway_charges),
            [
                {
                    "idempotency_key": attempt["idempotency_key"],
                    "payment_method": row.payment_method,
                    "amount": row.amount_due,
                    "status": "succeeded",
                }
                for attempt, row in zip(made, rows, strict=True)
            ],
        )
    # Step 3: the outcomes applied.
    async with connection.begin():
        await connection.execute(
            update(attempts)
            .where(attempts.c.id.in_([attempt["id"] for attempt in made]))
            .values(status="succeeded")
        )
        last = (
            await connection.execute(
                update(counters)
                .where(counters.c.creator_id == CREATOR)
                .values(next_receipt=counters.c.next_receipt + len(rows))
                .returning(counters.c.next_receipt)
            )
        ).scalar_one()
        first = last - len(rows)
        new_orders, lines, transactions, postings, made_events, emails = [], [], [], [], [], []
        for number, row in enumerate(rows, start=first):
            order, transaction = _new("ord"), _new("jtx")
            new_orders.append(
                {
                    "id": order,
                    "invoice_id": row.id,
                    "receipt_number": number,
                    "amount_total": row.amount_due,
                    "created_at": now,
                }
            )
            lines.append(
                {"id": _new("oli"), "order_id": order, "amount": row.amount_due, "quantity": 1}
            )
            transactions.append({"id": transaction, "source": row.id, "created_at": now})
            postings += [
                {
                    "id": _new("jl"),
                    "transaction_id": transaction,
                    "account": account,
                    "amount": amount,
                }
                for account, amount in POSTING
            ]
            made_events += [
                _event("invoice.paid", row.id, now),
                _event("order.created", order, now),
            ]
            emails.append(
                {
                    "id": _new("wrk"),
                    "kind": EMAIL,
                    "state": "queued",
                    "due_at": now,
                    "subject": order,
                }
            )
        await connection.execute(insert(orders), new_orders)
        await connection.execute(insert(order_lines), lines)
        await connection.execute(insert(journal_transactions), transactions)
        await connection.execute(insert(journal_lines), postings)
        upsert = postgres_insert if connection.dialect.name == "postgresql" else sqlite_insert
        for account, amount in POSTING:
            statement = upsert(balances).values(account=account, amount=amount * len(rows))
            await connection.execute(
                statement.on_conflict_do_update(
                    index_elements=[balances.c.account],
                    set_={"amount": balances.c.amount + statement.excluded.amount},
                )
            )
        await connection.execute(
            update(invoices)
            .where(invoices.c.id.in_(invoice_ids))
            .values(status="paid", amount_paid=invoices.c.amount_due)
        )
        await connection.execute(insert(events), made_events)
        await connection.execute(insert(work_items), emails)
        await connection.execute(
            delete(work_items).where(work_items.c.id.in_([id_ for id_, _ in claimed]))
        )


async def _dispatch(connection: AsyncConnection, now: datetime) -> None:
    async with connection.begin():
        await connection.execute(
            update(events).where(events.c.dispatched_at.is_(None)).values(dispatched_at=now)
        )


async def measure(
    url: str,
    *,
    count: int,
    connections: int = 1,
    batch: int = BATCH,
    cpu: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Seed ``count`` due subscriptions in the floor's tables of ``url``'s database, renew
    and charge them all in batches of ``batch`` over ``connections`` connections side by
    side, and check the outcome: renewals/s and the process's CPU per renewal (and the
    database's, read with ``cpu`` when given)."""
    engine = create_engine(url)
    now = datetime.now(UTC)
    try:
        async with engine.begin() as connection:
            await seed(connection, count=count, now=now)
        database_started = cpu() if cpu else 0.0
        started, cpu_started = time.monotonic(), time.process_time()
        await asyncio.gather(*(_work(engine, now, batch) for _ in range(connections)))
        elapsed = time.monotonic() - started
        used = time.process_time() - cpu_started
        database_used = cpu() - database_started if cpu else None
        async with engine.connect() as connection:
            checked = await _checked(connection, count)
    finally:
        await engine.dispose()
    return {
        "completed": count,
        "connections": connections,
        "per_second": round(count / elapsed, 1),
        "seconds": round(elapsed, 2),
        "process_cpu_ms_per_renewal": round(used * 1000 / count, 3),
        **(
            {}
            if database_used is None
            else {"postgres_cpu_ms_per_renewal": round(database_used * 1000 / count, 3)}
        ),
        **checked,
    }


async def _work(engine: AsyncEngine, now: datetime, batch: int) -> None:
    """Renew and charge batches on one connection until none is due."""
    async with engine.connect() as connection:
        while True:
            renewing = await _claim(connection, RENEW, now, batch)
            if renewing:
                await _renew(connection, renewing, now)
            charging = await _claim(connection, CHARGE, now, batch)
            if charging:
                await _charge(connection, charging, now)
            await _dispatch(connection, now)
            if not renewing and not charging:
                return


async def _checked(connection: AsyncConnection, count: int) -> dict[str, int]:
    async def scalar(statement: Any) -> int:
        return int((await connection.execute(statement)).scalar_one())

    checked = {
        "invoices_paid": await scalar(select(func.count()).where(invoices.c.status == "paid")),
        "gateway_charges": await scalar(select(func.count()).select_from(gateway_charges)),
        "orders": await scalar(select(func.count()).select_from(orders)),
        "journal_sum": await scalar(select(func.coalesce(func.sum(journal_lines.c.amount), 0))),
    }
    await connection.rollback()
    expected = {"invoices_paid": count, "gateway_charges": count, "orders": count, "journal_sum": 0}
    assert checked == expected, (checked, expected)
    return checked
