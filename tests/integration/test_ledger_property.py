"""Property: over any sequence of sales and partial refunds, the ledger balances, refunds
never exceed captures, and each creator's balance is exactly its share."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from stallholder.checkout import service as checkout
from stallholder.kit.db import Database
from stallholder.ledger import service as ledger
from stallholder.ledger.fees import FeePolicy, FeeSchedule
from stallholder.orders import service as orders
from stallholder.orders.models import Order, Refund
from stallholder.payments.gateway import SandboxGateway
from tests import factories
from tests.conftest import T0


@dataclass(frozen=True)
class Sale:
    creator: int
    currency: str
    unit_amount: int
    quantity: int


@dataclass(frozen=True)
class RefundOp:
    order: int
    amount: int | None  # None: refund all that remains


operations = st.lists(
    st.one_of(
        st.builds(
            Sale,
            creator=st.integers(0, 1),
            currency=st.sampled_from(["usd", "jpy", "eur"]),
            unit_amount=st.integers(1, 200_000),
            quantity=st.integers(1, 3),
        ),
        st.builds(
            RefundOp, order=st.integers(0, 20), amount=st.one_of(st.none(), st.integers(1, 700_000))
        ),
    ),
    min_size=1,
    max_size=14,
)


async def _run(url: str, ops: list[Sale | RefundOp], fees: list[FeePolicy]) -> None:
    database = Database(url)
    gateway = SandboxGateway()
    default = FeeSchedule(bps=500)
    try:
        async with database.unit_of_work() as session:
            creators = [
                await factories.create_creator(
                    session,
                    now=T0,
                    name=f"Creator {i}",
                    platform_fee_bps=fee.bps,
                    platform_fee_fixed={"usd": fee.fixed},
                )
                for i, fee in enumerate(fees)
            ]
        order_ids: list[tuple[str, str]] = []
        for op in ops:
            if isinstance(op, Sale):
                creator = creators[op.creator]
                async with database.unit_of_work() as session:
                    price = await factories.create_price(
                        session,
                        creator_id=creator.id,
                        now=T0,
                        unit_amount=op.unit_amount,
                        currency=op.currency,
                    )
                    sale = await factories.create_session(
                        session,
                        creator_id=creator.id,
                        price_id=price.id,
                        now=T0,
                        quantity=op.quantity,
                    )
                outcome = await checkout.confirm_session(
                    database,
                    gateway,
                    creator_id=creator.id,
                    session_id=sale.id,
                    payment_method="tok_visa",
                    client_secret=None,
                    customer_email=None,
                    default_fees=default,
                    base_url="http://testserver",
                    resolve_after=T0 + timedelta(minutes=2),
                    now=T0,
                )
                assert outcome.session.order_id is not None
                order_ids.append((creator.id, outcome.session.order_id))
                continue
            if isinstance(op, RefundOp) and order_ids:
                creator_id, order_id = order_ids[op.order % len(order_ids)]
                # A refused refund may change nothing: checked below.
                with contextlib.suppress(orders.RefundTooLarge, orders.OrderFullyRefunded):
                    await orders.create_refund(
                        database,
                        gateway,
                        creator_id=creator_id,
                        order_id=order_id,
                        amount=op.amount,
                        reason=None,
                        resolve_after=T0 + timedelta(minutes=2),
                        now=T0 + timedelta(seconds=1),
                    )

        async with database.unit_of_work() as session:
            report = await ledger.verify(session)
            assert report.is_clean, report
            for order in (await session.execute(select(Order))).scalars():
                refunded = (
                    await session.execute(
                        select(func.coalesce(func.sum(Refund.amount), 0)).where(
                            Refund.order_id == order.id
                        )
                    )
                ).scalar_one()
                assert refunded == order.amount_refunded <= order.amount_total
            for creator in creators:
                expected: dict[str, int] = {}
                for order in (
                    await session.execute(select(Order).where(Order.creator_id == creator.id))
                ).scalars():
                    kept = order.amount_total - order.platform_fee - order.processor_fee
                    reversed_share = sum(
                        r.amount - r.platform_fee_reversed - r.processor_fee_reversed
                        for r in order.refunds
                    )
                    expected[order.currency] = (
                        expected.get(order.currency, 0) + kept - reversed_share
                    )
                balances = await ledger.balances_of(
                    session, account=ledger.creator_account(creator.id)
                )
                # A zero share posts no line, so compare the non-zero balances.
                assert {c: a for c, a in balances.items() if a} == {
                    c: a for c, a in expected.items() if a
                }
    finally:
        await database.dispose()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    ops=operations,
    fees=st.lists(
        st.builds(FeePolicy, bps=st.integers(0, 3000), fixed=st.integers(0, 200)),
        min_size=2,
        max_size=2,
    ),
)
def test_ledger_always_balances(
    sqlite_template: Path, tmp_path: Path, ops: list[Sale | RefundOp], fees: list[FeePolicy]
) -> None:
    path = tmp_path / "property.db"
    shutil.copyfile(sqlite_template, path)
    asyncio.run(_run(f"sqlite:///{path}", ops, fees))


@pytest.mark.postgres
@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    ops=operations,
    fees=st.lists(
        st.builds(FeePolicy, bps=st.integers(0, 3000), fixed=st.integers(0, 200)),
        min_size=2,
        max_size=2,
    ),
)
def test_ledger_always_balances_on_postgres(
    postgres_url: str, ops: list[Sale | RefundOp], fees: list[FeePolicy]
) -> None:
    # The database is emptied first (``postgres_url``): the check verifies its whole
    # ledger, which another test's rows on the same database must not decide.
    asyncio.run(_run(postgres_url, ops, fees))
