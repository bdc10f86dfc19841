"""Property (stateful): over any interleaving of holds, expiries, payments, shipments,
refunds with restock (before and after shipping), adjustments, transfers and sessions in a
drop, on SQLite and PostgreSQL, no level's ``available`` is ever negative (``on_hand ≥
reserved + allocated``), the movement ledger sums to each level's ``on_hand``, ``reserved``
and ``allocated`` are exactly what the reservations say, a drop never sells past its
quantity or a buyer past the limit, and every count matches a model kept beside the
services."""

from __future__ import annotations

import asyncio
import shutil
from collections import defaultdict
from collections.abc import Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select

from stallholder.catalog import service as catalog
from stallholder.checkout import service as checkout
from stallholder.fulfilment import shipments
from stallholder.inventory import drops, stock
from stallholder.inventory.drop_rules import buyer_key
from stallholder.inventory.models import (
    DropBuyer,
    DropClaim,
    DropItem,
    StockLevel,
    StockMovement,
    StockReservation,
)
from stallholder.inventory.reservations import OutOfStock
from stallholder.kit.db import Database
from stallholder.ledger.fees import FeeSchedule
from stallholder.orders import service as orders
from stallholder.payments.gateway import SandboxGateway
from tests import factories
from tests.conftest import T0, _truncate_postgres

T = TypeVar("T")
SKUS = ("MUG-A", "MUG-B")
LOCATIONS = ("Workshop", "Partner")
TTL = timedelta(minutes=30)
# The saucer sells only in a drop of 4, at most 3 per buyer; two buyers, one of them
# spelling the address two ways.
DROP_QUANTITY = 4
DROP_LIMIT = 3
BUYERS = ("ada@gmail.com", "A.D.A+tab@gmail.com", "grace@example.com")


class InventoryMachine(RuleBasedStateMachine):
    """The services against a real database, and a model of what each level must hold."""

    url: str

    sessions = Bundle("sessions")
    orders = Bundle("orders")
    shipped = Bundle("shipped")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.database = Database(self.url)
        self.gateway = SandboxGateway()
        self.now = T0
        # (sku, location index) -> on_hand; reserved and allocated per session / order.
        self.on_hand: dict[tuple[str, int], int] = defaultdict(int)
        self.held: dict[str, dict[tuple[str, int], int]] = {}
        self.allocated: dict[str, dict[tuple[str, int], int]] = {}
        # Units that left with each shipped order, until a refund brings them back.
        self.gone: dict[str, dict[tuple[str, int], int]] = {}
        # Drop claims by session: (buyer key, units); sold ones by order; and those a
        # refund with restock gave back to the drop (still on the buyer's count).
        self.claims: dict[str, tuple[str, int]] = {}
        self.sold_claims: dict[str, tuple[str, int]] = {}
        self.restocked_claims: list[tuple[str, int]] = []
        self.run(self._set_up())

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        self.run(self.database.dispose())
        self.loop.close()

    async def _set_up(self) -> None:
        async with self.database.unit_of_work() as session:
            creator = await factories.create_creator(session, now=T0)
            self.creator_id = creator.id
            product = await catalog.create_product(
                session,
                creator_id=creator.id,
                kind="physical",
                name="Mug",
                description="",
                status="published",
                variants=[catalog.VariantSpec(sku=sku) for sku in SKUS],
                now=T0,
            )
            self.variants = {v.sku: v.id for v in product.variants}
            price = await catalog.create_price(
                session,
                creator_id=creator.id,
                product_id=product.id,
                now=T0,
                spec=catalog.PriceSpec(currency="usd", unit_amount=1000),
            )
            self.price_id = price.id
            saucer = await catalog.create_product(
                session,
                creator_id=creator.id,
                kind="physical",
                name="Saucer",
                description="",
                status="published",
                variants=[catalog.VariantSpec(sku="SAUCER")],
                now=T0,
            )
            saucer_price = await catalog.create_price(
                session,
                creator_id=creator.id,
                product_id=saucer.id,
                now=T0,
                spec=catalog.PriceSpec(currency="usd", unit_amount=900),
            )
            self.drop_price_id = saucer_price.id
            view = await drops.create_drop(
                session,
                creator_id=creator.id,
                name="Saucers",
                mode="first_come",
                opens_at=T0,
                closes_at=T0 + timedelta(days=1),
                per_customer_limit=DROP_LIMIT,
                reservation_minutes=10,
                items=[drops.ItemSpec(price_id=saucer_price.id, quantity=DROP_QUANTITY)],
                now=T0,
            )
            self.drop_id = view.drop.id
            self.locations = [
                (await stock.create_location(session, creator_id=creator.id, name=name, now=T0)).id
                for name in LOCATIONS
            ]

    def _tick(self) -> None:
        self.now += timedelta(seconds=1)

    # Rules ---------------------------------------------------------------------------------

    @rule(
        sku=st.sampled_from(SKUS),
        location=st.integers(0, 1),
        delta=st.integers(-4, 6).filter(bool),
        kind=st.sampled_from(["received", "adjusted", "damaged", "returned"]),
    )
    def adjust(self, sku: str, location: int, delta: int, kind: Any) -> None:
        self._tick()
        key = (sku, location)
        committed = sum(h.get(key, 0) for h in self.held.values()) + sum(
            a.get(key, 0) for a in self.allocated.values()
        )
        try:
            self.run(self._adjust(sku, location, delta, kind))
        except stock.StockCommitted:
            assert self.on_hand[key] + delta < committed
            return
        assert self.on_hand[key] + delta >= committed
        self.on_hand[key] += delta

    async def _adjust(self, sku: str, location: int, delta: int, kind: Any) -> None:
        async with self.database.unit_of_work() as session:
            await stock.adjust(
                session,
                creator_id=self.creator_id,
                sku=sku,
                location_id=self.locations[location],
                delta=delta,
                set_to=None,
                kind=kind,
                reason="property",
                actor="test",
                now=self.now,
            )

    @rule(
        sku=st.sampled_from(SKUS),
        source=st.integers(0, 1),
        quantity=st.integers(1, 3),
    )
    def transfer(self, sku: str, source: int, quantity: int) -> None:
        self._tick()
        try:
            self.run(self._transfer(sku, source, quantity))
        except stock.InsufficientStock:
            return
        self.on_hand[(sku, source)] -= quantity
        self.on_hand[(sku, 1 - source)] += quantity

    async def _transfer(self, sku: str, source: int, quantity: int) -> None:
        async with self.database.unit_of_work() as session:
            await stock.transfer(
                session,
                creator_id=self.creator_id,
                sku=sku,
                from_location_id=self.locations[source],
                to_location_id=self.locations[1 - source],
                quantity=quantity,
                reason="property",
                actor="test",
                now=self.now,
            )

    @rule(target=sessions, a=st.integers(0, 3), b=st.integers(0, 3))
    def reserve(self, a: int, b: int) -> Any:
        self._tick()
        wants = [(sku, n) for sku, n in zip(SKUS, (a, b), strict=True) if n]
        if not wants:
            wants = [(SKUS[0], 1)]
        try:
            session_id = self.run(self._reserve(wants))
        except OutOfStock:
            return multiple()  # no session was opened
        self.held[session_id] = self.run(self._held_by_level(session_id))
        return session_id

    async def _reserve(self, wants: list[tuple[str, int]]) -> str:
        async with self.database.unit_of_work() as session:
            created = await checkout.create_session(
                session,
                creator_id=self.creator_id,
                lines=[
                    checkout.LineRequest(
                        price_id=self.price_id, quantity=n, variant_id=self.variants[sku]
                    )
                    for sku, n in wants
                ],
                customer_id=None,
                customer_email="buyer@example.com",
                success_url=None,
                cancel_url=None,
                ttl=TTL,
                now=self.now,
            )
            return created.id

    @rule(target=sessions, buyer=st.integers(0, 2), quantity=st.integers(1, 3))
    def reserve_in_drop(self, buyer: int, quantity: int) -> Any:
        self._tick()
        key = buyer_key(BUYERS[buyer])
        units = sum(
            n
            for k, n in [
                *self.claims.values(),
                *self.sold_claims.values(),
                *self.restocked_claims,
            ]
            if k == key
        )
        left = (
            DROP_QUANTITY
            - sum(n for _, n in self.claims.values())
            - sum(n for _, n in self.sold_claims.values())
        )
        try:
            session_id = self.run(self._reserve_in_drop(BUYERS[buyer], quantity))
        except drops.DropLimitReached:
            assert units + quantity > DROP_LIMIT
            return multiple()
        except OutOfStock:
            # The buyer's limit is checked first: the drop ran out.
            assert units + quantity <= DROP_LIMIT
            assert left < quantity
            return multiple()
        assert units + quantity <= DROP_LIMIT
        assert quantity <= left
        self.held[session_id] = {}
        self.claims[session_id] = (key, quantity)
        return session_id

    async def _reserve_in_drop(self, email: str, quantity: int) -> str:
        async with self.database.unit_of_work() as session:
            created = await checkout.create_session(
                session,
                creator_id=self.creator_id,
                lines=[checkout.LineRequest(price_id=self.drop_price_id, quantity=quantity)],
                customer_id=None,
                customer_email=email,
                success_url=None,
                cancel_url=None,
                ttl=TTL,
                now=self.now,
            )
            return created.id

    async def _held_by_level(self, session_id: str) -> dict[tuple[str, int], int]:
        async with self.database.unit_of_work() as session:
            rows = await session.execute(
                select(StockReservation.sku, StockLevel.location_id, StockReservation.quantity)
                .join(StockLevel, StockLevel.id == StockReservation.stock_level_id)
                .where(StockReservation.checkout_session_id == session_id)
            )
            return {
                (sku, self.locations.index(location)): quantity for sku, location, quantity in rows
            }

    @rule(session_id=consumes(sessions), by_clock=st.booleans())
    def expire(self, session_id: str, by_clock: bool) -> None:
        """The worker's expiry at ``expires_at``, or a cancel before it."""
        self._tick()
        self.run(self._expire(session_id, by_clock=by_clock))
        del self.held[session_id]
        self.claims.pop(session_id, None)

    async def _expire(self, session_id: str, *, by_clock: bool) -> None:
        async with self.database.unit_of_work() as session:
            if by_clock:
                # Past this session's expiry; the machine's clock stays before the others'.
                assert await checkout.expire_session(
                    session,
                    session_id=session_id,
                    base_url="http://testserver",
                    now=self.now + TTL,
                )
                return
            await checkout.cancel_session(
                session,
                creator_id=self.creator_id,
                session_id=session_id,
                base_url="http://testserver",
                now=self.now,
            )

    @rule(target=orders, session_id=consumes(sessions))
    def pay(self, session_id: str) -> Any:
        self._tick()
        order_id = self.run(self._pay(session_id))
        self.allocated[order_id] = self.held.pop(session_id)
        if session_id in self.claims:
            self.sold_claims[order_id] = self.claims.pop(session_id)
        return order_id

    async def _pay(self, session_id: str) -> str:
        outcome = await checkout.confirm_session(
            self.database,
            self.gateway,
            creator_id=self.creator_id,
            session_id=session_id,
            payment_method="tok_visa",
            client_secret=None,
            customer_email=None,
            default_fees=FeeSchedule(bps=500),
            base_url="http://testserver",
            resolve_after=self.now + timedelta(minutes=2),
            now=self.now,
        )
        assert outcome.error is None
        assert outcome.session.order_id is not None
        return outcome.session.order_id

    @rule(order_id=consumes(orders))
    def refund_with_restock(self, order_id: str) -> None:
        self._tick()
        refund = self.run(self._refund(order_id))
        assert refund.status == "succeeded"
        del self.allocated[order_id]
        # The drop may sell the units again; the buyer's count keeps them.
        if order_id in self.sold_claims:
            self.restocked_claims.append(self.sold_claims.pop(order_id))

    async def _refund(self, order_id: str) -> Any:
        return await orders.create_refund(
            self.database,
            self.gateway,
            creator_id=self.creator_id,
            order_id=order_id,
            amount=None,
            reason=None,
            resolve_after=self.now + timedelta(minutes=2),
            now=self.now,
            restock=True,
        )

    @rule(target=shipped, order_id=consumes(orders))
    def ship(self, order_id: str) -> Any:
        self._tick()
        units = self.allocated.pop(order_id)
        try:
            self.run(self._ship(order_id))
        except shipments.NothingToShip:
            assert not units
            return multiple()
        for key, n in units.items():
            self.on_hand[key] -= n
        self.gone[order_id] = units
        return order_id

    async def _ship(self, order_id: str) -> None:
        async with self.database.unit_of_work() as session:
            await shipments.ship_order(
                session,
                creator_id=self.creator_id,
                order_id=order_id,
                carrier=None,
                tracking_number=None,
                tracking_url=None,
                actor="test",
                now=self.now,
            )

    @rule(order_id=consumes(shipped))
    def refund_shipped_with_restock(self, order_id: str) -> None:
        self._tick()
        refund = self.run(self._refund(order_id))
        assert refund.status == "succeeded"
        for key, n in self.gone.pop(order_id).items():
            self.on_hand[key] += n
        if order_id in self.sold_claims:
            self.restocked_claims.append(self.sold_claims.pop(order_id))

    # Invariants ----------------------------------------------------------------------------

    @invariant()
    def drop_adds_up(self) -> None:
        self.run(self._check_drop())

    async def _check_drop(self) -> None:
        async with self.database.unit_of_work() as session:
            item = (
                await session.execute(select(DropItem).where(DropItem.drop_id == self.drop_id))
            ).scalar_one()
            held = sum(n for _, n in self.claims.values())
            sold = sum(n for _, n in self.sold_claims.values())
            assert (item.held, item.sold) == (held, sold)
            assert item.held + item.sold <= item.quantity
            for status, expected in (("held", held), ("sold", sold)):
                claimed = (
                    await session.execute(
                        select(func.coalesce(func.sum(DropClaim.quantity), 0)).where(
                            DropClaim.drop_id == self.drop_id, DropClaim.status == status
                        )
                    )
                ).scalar_one()
                assert claimed == expected
            rows = await session.execute(
                select(DropBuyer.buyer_key, DropBuyer.units).where(
                    DropBuyer.drop_id == self.drop_id
                )
            )
            buyers = {row.buyer_key: row.units for row in rows}
            expected_units: dict[str, int] = defaultdict(int)
            for key, n in [
                *self.claims.values(),
                *self.sold_claims.values(),
                *self.restocked_claims,
            ]:
                expected_units[key] += n
            assert {k: v for k, v in buyers.items() if v} == dict(expected_units)
            assert all(units <= DROP_LIMIT for units in buyers.values())

    @invariant()
    def stock_adds_up(self) -> None:
        self.run(self._check())

    async def _check(self) -> None:
        async with self.database.unit_of_work() as session:
            levels = (await session.execute(select(StockLevel))).scalars().all()
            for level in levels:
                key = (level.sku, self.locations.index(level.location_id))
                assert level.on_hand - level.reserved - level.allocated >= 0
                assert stock.quantities_of(level).available >= 0
                moved = (
                    await session.execute(
                        select(func.coalesce(func.sum(StockMovement.quantity), 0)).where(
                            StockMovement.stock_level_id == level.id
                        )
                    )
                ).scalar_one()
                assert moved == level.on_hand == self.on_hand[key]
                for status, column in (("held", "reserved"), ("allocated", "allocated")):
                    promised = (
                        await session.execute(
                            select(func.coalesce(func.sum(StockReservation.quantity), 0)).where(
                                StockReservation.stock_level_id == level.id,
                                StockReservation.status == status,
                            )
                        )
                    ).scalar_one()
                    assert promised == getattr(level, column)
                assert level.reserved == sum(h.get(key, 0) for h in self.held.values())
                assert level.allocated == sum(a.get(key, 0) for a in self.allocated.values())


def test_stock_stays_consistent_on_sqlite(sqlite_template: Path, tmp_path: Path) -> None:
    path = tmp_path / "property.db"

    class Fresh(InventoryMachine):
        def __init__(self) -> None:
            shutil.copyfile(sqlite_template, path)
            super().__init__()

    Fresh.url = f"sqlite:///{path}"
    run_state_machine_as_test(
        Fresh,
        settings=settings(
            max_examples=30,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )


@pytest.mark.postgres
def test_stock_stays_consistent_on_postgres(postgres_server_url: str) -> None:
    class Fresh(InventoryMachine):
        def __init__(self) -> None:
            _truncate_postgres(postgres_server_url)
            super().__init__()

    Fresh.url = postgres_server_url
    run_state_machine_as_test(
        Fresh,
        settings=settings(
            max_examples=8,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
