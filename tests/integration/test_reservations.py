"""A session that expires while its charge is at the gateway keeps its stock for that
charge: a success allocates it, a failure releases it. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from stallholder.catalog.models import Variant
from stallholder.checkout import service as checkout
from stallholder.inventory import stock
from stallholder.inventory.quantities import Quantities
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.ledger.fees import FeeSchedule
from stallholder.payments import service as payments
from stallholder.payments.gateway import ChargeResult, SandboxGateway
from tests import factories
from tests.conftest import T0

pytestmark = pytest.mark.anyio
BASE_URL = "http://testserver"


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


async def _shop(database: Database) -> tuple[str, str, str]:
    """A creator, a tracked mug with 5 pieces, and a session holding 2: (creator, sku,
    session)."""
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
        price = await factories.create_price(session, creator_id=creator.id, now=T0)
        sku = (
            await session.execute(select(Variant.sku).where(Variant.product_id == price.product_id))
        ).scalar_one()
        location = await stock.create_location(session, creator_id=creator.id, name="Kiln", now=T0)
        await stock.adjust(
            session,
            creator_id=creator.id,
            sku=sku,
            location_id=location.id,
            delta=5,
            set_to=None,
            kind="received",
            reason="firing",
            actor="test",
            now=T0,
        )
        held = await factories.create_session(
            session, creator_id=creator.id, price_id=price.id, now=T0, quantity=2
        )
    return creator.id, sku, held.id


async def _totals(database: Database, creator_id: str, sku: str) -> Quantities:
    async with database.unit_of_work() as session:
        return (await stock.stock_for_sku(session, creator_id=creator_id, sku=sku)).total


async def _begin(database: Database, creator_id: str, session_id: str) -> payments.GatewayCall:
    async with database.unit_of_work() as session:
        start = await checkout.begin_confirm(
            session,
            SandboxGateway(),
            creator_id=creator_id,
            session_id=session_id,
            payment_method="tok_visa",
            client_secret=None,
            customer_email=None,
            default_fees=FeeSchedule(bps=500),
            resolve_after=T0 + timedelta(minutes=2),
            now=T0 + timedelta(minutes=29),
        )
    assert start.call is not None
    return start.call


async def _expire(database: Database, session_id: str, clock: FrozenClock) -> None:
    async with database.unit_of_work() as session:
        assert await checkout.expire_session(
            session, session_id=session_id, base_url=BASE_URL, now=clock.now()
        )


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (
            ChargeResult(status="succeeded", reference="ch_late", processor_fee=0),
            Quantities(on_hand=5, reserved=0, allocated=2),
        ),
        (
            ChargeResult(
                status="failed", reference=None, decline_code="card_declined", message="No."
            ),
            Quantities(on_hand=5, reserved=0, allocated=0),
        ),
    ],
)
async def test_an_expiry_during_the_charge_keeps_the_stock_for_its_outcome(
    database: Database, clock: FrozenClock, result: ChargeResult, expected: Quantities
) -> None:
    creator_id, sku, session_id = await _shop(database)
    call = await _begin(database, creator_id, session_id)
    clock.set(T0 + timedelta(minutes=31))

    await _expire(database, session_id, clock)
    during = await _totals(database, creator_id, sku)
    async with database.unit_of_work() as session:
        outcome = await checkout.finish_confirm(
            session, call=call, result=result, base_url=BASE_URL, now=clock.now()
        )

    assert during == Quantities(on_hand=5, reserved=2, allocated=0)
    assert outcome.session.status == ("complete" if result.status == "succeeded" else "expired")
    assert await _totals(database, creator_id, sku) == expected


async def test_an_unpaid_session_gives_its_stock_back_at_expiry_once(
    database: Database, clock: FrozenClock
) -> None:
    creator_id, sku, session_id = await _shop(database)
    clock.set(T0 + timedelta(minutes=30))
    await _expire(database, session_id, clock)
    async with database.unit_of_work() as session:
        again = await checkout.expire_session(
            session, session_id=session_id, base_url=BASE_URL, now=clock.now()
        )
    assert again is False
    assert await _totals(database, creator_id, sku) == Quantities(
        on_hand=5, reserved=0, allocated=0
    )
