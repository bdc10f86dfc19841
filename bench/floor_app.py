"""The floor: the least a sale can cost on Stallholder's stack.

FastAPI, async SQLAlchemy Core, psycopg (aiosqlite on SQLite), the same engine settings as
Stallholder (``kit.db.create_engine``: WAL and ``BEGIN IMMEDIATE`` on SQLite, the same pool
on PostgreSQL), served by the same uvicorn. One request (``POST /v1/sales``, a pydantic
body, a JSON answer) runs the sale's 14 statements in one transaction:

    1 price read · 1 session insert · 1 payment attempt insert · 1 order insert
    2 order line inserts · 5 journal line inserts · 3 balance upserts · 2 event inserts

No authentication, idempotency record, ORM, fees, email or outbox dispatch: whatever
Stallholder spends beyond this is what the benchmark's ratio shows.

The drop storm's floor (``bench.drops``) is ``POST /v1/holds``: a hold of one unit of a
drop item in one transaction, a hold row written and then the item's conditional update
(``held + 1`` where enough is left) last before the commit, as Stallholder orders them
(ADR 0024); 201, or 409 when nothing is left (rolled back). Its own minimal schema
lives here; ``bench.checkout`` creates it with ``create_schema`` before serving it.

Configuration: ``FLOOR_DATABASE_URL`` (``sqlite:///…`` or ``postgresql://…``).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from stallholder.kit.db import create_engine, sync_url

metadata = MetaData()


def _id() -> Column[str]:
    return Column("id", String(40), primary_key=True)


def _now() -> Column[datetime]:
    return Column("created_at", DateTime(timezone=True), nullable=False)


prices = Table(
    "floor_prices",
    metadata,
    _id(),
    Column("creator_id", String(40), nullable=False),
    Column("unit_amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
)
sessions = Table(
    "floor_sessions",
    metadata,
    _id(),
    Column("creator_id", String(40), nullable=False),
    Column("status", String(20), nullable=False),
    Column("customer_email", String(320), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount_total", BigInteger, nullable=False),
    _now(),
)
attempts = Table(
    "floor_attempts",
    metadata,
    _id(),
    Column("session_id", ForeignKey("floor_sessions.id"), nullable=False),
    Column("status", String(20), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    _now(),
)
orders = Table(
    "floor_orders",
    metadata,
    _id(),
    Column("creator_id", String(40), nullable=False),
    Column("session_id", ForeignKey("floor_sessions.id"), nullable=False, unique=True),
    Column("customer_email", String(320), nullable=False),
    Column("amount_total", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    _now(),
)
order_lines = Table(
    "floor_order_lines",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("order_id", ForeignKey("floor_orders.id"), nullable=False),
    Column("price_id", String(40), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_amount", BigInteger, nullable=False),
)
journal_lines = Table(
    "floor_journal_lines",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("transaction_id", String(40), nullable=False, index=True),
    Column("account", String(80), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger, nullable=False),
    _now(),
)
balances = Table(
    "floor_balances",
    metadata,
    Column("account", String(80), primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("amount", BigInteger, nullable=False),
)
events = Table(
    "floor_events",
    metadata,
    _id(),
    Column("creator_id", String(40), nullable=False),
    Column("type", String(60), nullable=False),
    Column("data", Text, nullable=False),
    _now(),
)

drop_items = Table(
    "floor_drop_items",
    metadata,
    _id(),
    Column("quantity", BigInteger, nullable=False),
    Column("held", BigInteger, nullable=False),
    Column("sold", BigInteger, nullable=False),
)
holds = Table(
    "floor_holds",
    metadata,
    _id(),
    Column("drop_item_id", String(40), nullable=False),
    Column("customer_email", String(320), nullable=False),
    Column("quantity", Integer, nullable=False),
    _now(),
)

CREATOR = "cr_floor"
PRICE = "price_floor"
DROP_ITEM = "di_floor"


def create_schema(url: str) -> None:
    """The floor's tables and its one $15.00 price (idempotent)."""
    from sqlalchemy import create_engine as create_sync_engine

    engine = create_sync_engine(sync_url(url))
    metadata.create_all(engine)
    with engine.begin() as connection:
        if connection.execute(select(prices.c.id)).first() is None:
            connection.execute(
                insert(prices).values(
                    id=PRICE, creator_id=CREATOR, unit_amount=1500, currency="usd"
                )
            )
    engine.dispose()


def create_drop_item(url: str, *, quantity: int) -> None:
    """The floor's tables (idempotent) and its drop item of ``quantity`` units, none held."""
    from sqlalchemy import create_engine as create_sync_engine

    engine = create_sync_engine(sync_url(url))
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(delete(drop_items).where(drop_items.c.id == DROP_ITEM))
        connection.execute(
            insert(drop_items).values(id=DROP_ITEM, quantity=quantity, held=0, sold=0)
        )
    engine.dispose()


class SaleIn(BaseModel):
    price: str = Field(max_length=40)
    quantity: int = Field(ge=1, le=100)
    customer_email: str = Field(max_length=320)


class SaleOut(BaseModel):
    id: str
    order: str
    status: str
    amount_total: int
    currency: str


engine = create_engine(os.environ.get("FLOOR_DATABASE_URL", "sqlite:///floor.db"))
upsert = postgres_insert if engine.dialect.name == "postgresql" else sqlite_insert


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


def _bump(account: str, currency: str, amount: int) -> Any:
    statement = upsert(balances).values(account=account, currency=currency, amount=amount)
    return statement.on_conflict_do_update(
        index_elements=[balances.c.account, balances.c.currency],
        set_={"amount": balances.c.amount + statement.excluded.amount},
    )


@app.post("/v1/sales", status_code=201)
async def sale(body: SaleIn) -> SaleOut:
    now = datetime.now(UTC)
    session_id, attempt_id, order_id, txn = (f"x_{uuid.uuid4().hex}" for _ in range(4))
    async with engine.begin() as connection:
        price = (
            await connection.execute(
                select(prices.c.unit_amount, prices.c.currency).where(prices.c.id == body.price)
            )
        ).first()
        if price is None:
            raise HTTPException(404, "no such price")
        unit, currency = price
        total = unit * body.quantity
        fee = total * 5 // 100
        processor = total * 29 // 1000 + 30
        await connection.execute(
            insert(sessions).values(
                id=session_id,
                creator_id=CREATOR,
                status="complete",
                customer_email=body.customer_email,
                currency=currency,
                amount_total=total,
                created_at=now,
            )
        )
        await connection.execute(
            insert(attempts).values(
                id=attempt_id,
                session_id=session_id,
                status="succeeded",
                amount=total,
                currency=currency,
                created_at=now,
            )
        )
        await connection.execute(
            insert(orders).values(
                id=order_id,
                creator_id=CREATOR,
                session_id=session_id,
                customer_email=body.customer_email,
                amount_total=total,
                currency=currency,
                created_at=now,
            )
        )
        for _ in range(2):
            await connection.execute(
                insert(order_lines).values(
                    order_id=order_id,
                    price_id=body.price,
                    quantity=body.quantity // 2 or 1,
                    unit_amount=unit,
                )
            )
        postings = [
            ("processor:clearing", total - processor),
            ("platform:processor_fees", processor),
            ("creator:" + CREATOR, -(total - fee)),
            ("platform:revenue", -fee),
            ("platform:receivable", 0),
        ]
        for account, amount in postings:
            await connection.execute(
                insert(journal_lines).values(
                    transaction_id=txn,
                    account=account,
                    currency=currency,
                    amount=amount,
                    created_at=now,
                )
            )
        for account, amount in sorted(postings[:3]):
            await connection.execute(_bump(account, currency, amount))
        for kind in ("checkout.session.completed", "order.paid"):
            await connection.execute(
                insert(events).values(
                    id=f"evt_{uuid.uuid4().hex}",
                    creator_id=CREATOR,
                    type=kind,
                    data=json.dumps({"order": order_id, "amount_total": total}),
                    created_at=now,
                )
            )
    return SaleOut(
        id=session_id, order=order_id, status="complete", amount_total=total, currency=currency
    )


class HoldIn(BaseModel):
    item: str = Field(max_length=40)
    customer_email: str = Field(max_length=320)


class HoldOut(BaseModel):
    id: str
    item: str
    quantity: int


@app.post("/v1/holds", status_code=201)
async def hold(body: HoldIn) -> HoldOut:
    hold_id = f"x_{uuid.uuid4().hex}"
    async with engine.connect() as connection:
        transaction = await connection.begin()
        await connection.execute(
            insert(holds).values(
                id=hold_id,
                drop_item_id=body.item,
                customer_email=body.customer_email,
                quantity=1,
                created_at=datetime.now(UTC),
            )
        )
        held = await connection.execute(
            update(drop_items)
            .where(drop_items.c.id == body.item)
            .where(drop_items.c.quantity - drop_items.c.held - drop_items.c.sold >= 1)
            .values(held=drop_items.c.held + 1)
        )
        if held.rowcount != 1:
            await transaction.rollback()
            raise HTTPException(409, "out of stock")
        await transaction.commit()
    return HoldOut(id=hold_id, item=body.item, quantity=1)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
