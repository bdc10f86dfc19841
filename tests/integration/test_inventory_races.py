"""Stock never oversells under concurrency, on SQLite and PostgreSQL: a storm of buyers for
a few units, expiries racing new holds, and a slow gateway that must not stop other
buyers from holding stock (no transaction is open while it is called)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from stallholder.app import create_app
from stallholder.checkout import service as checkout
from stallholder.checkout.models import CheckoutSession
from stallholder.inventory.models import StockReservation
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.ledger import service as ledger
from stallholder.orders.models import Order
from stallholder.payments.gateway import ChargeRequest, ChargeResult, SandboxGateway
from stallholder.settings import Settings
from tests.conftest import Api, bearer

pytestmark = pytest.mark.anyio
OUT_OF_STOCK = "https://stallholder.dev/problems/out-of-stock"


class SlowGateway(SandboxGateway):
    """The sandbox, but the first charge takes 2 s and then waits for ``release``: a slow
    provider, with the window held open until the test has seen what it needs."""

    def __init__(self) -> None:
        super().__init__()
        self.is_slow = False
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        if self.is_slow and not self.entered.is_set():
            self.entered.set()
            await asyncio.sleep(2)
            await self.release.wait()
        return await super().charge(request)


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


@pytest.fixture
def gateway() -> SlowGateway:
    return SlowGateway()


@pytest.fixture
async def client(
    settings: Settings, database: Database, clock: FrozenClock, gateway: SlowGateway
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, database=database, clock=clock, gateway=gateway, run_worker=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def _stocked_shop(api: Api, *, units: int) -> tuple[str, str]:
    """A creator with a mug of ``units`` pieces at one location: (secret key, price)."""
    creator = await api.creator(name="Kiln & Clay")
    sk: str = creator["secret_key"]
    product = await api.product(sk, name="Winter mug", variants=[{"sku": "MUG-W"}])
    price = await api.price(sk, product=product["id"], unit_amount=4800)
    location = await api.http.post("/v1/locations", headers=bearer(sk), json={"name": "Kiln"})
    adjusted = await api.http.post(
        "/v1/inventory/adjustments",
        headers=bearer(sk),
        json={
            "sku": "MUG-W",
            "location": location.json()["id"],
            "delta": units,
            "kind": "received",
            "reason": "firing",
        },
    )
    assert adjusted.status_code == 200, adjusted.text
    return sk, price["id"]


async def _totals(api: Api, sk: str) -> tuple[int, int, int, int]:
    stock = (await api.http.get("/v1/inventory/MUG-W", headers=bearer(sk))).json()
    return (stock["on_hand"], stock["reserved"], stock["allocated"], stock["available"])


async def _open_session(api: Api, sk: str, price: str, buyer: int) -> httpx.Response:
    return await api.http.post(
        "/v1/checkout/sessions",
        headers=bearer(sk),
        json={
            "line_items": [{"price": price, "quantity": 1}],
            "customer_email": f"buyer{buyer}@example.com",
        },
    )


async def _count(database: Database, statement: Any) -> int:
    async with database.unit_of_work() as session:
        return int((await session.execute(statement)).scalar_one())


async def test_200_buyers_for_10_units_make_exactly_10_orders(api: Api, database: Database) -> None:
    sk, price = await _stocked_shop(api, units=10)

    async def buyer(number: int) -> tuple[int, int | None, str | None]:
        opened = await _open_session(api, sk, price, number)
        if opened.status_code != 201:
            return opened.status_code, None, opened.json().get("type")
        paid = await api.confirm(sk, opened.json()["id"])
        return opened.status_code, paid.status_code, paid.json().get("status")

    outcomes = await asyncio.gather(*(buyer(n) for n in range(200)))

    assert Counter(outcomes) == {
        (201, 200, "complete"): 10,
        (409, None, OUT_OF_STOCK): 190,
    }
    assert await _count(database, select(func.count()).select_from(Order)) == 10
    assert await _totals(api, sk) == (10, 0, 10, 0)
    assert (
        await _count(
            database,
            select(func.count())
            .select_from(StockReservation)
            .where(StockReservation.status == "allocated"),
        )
        == 10
    )
    async with database.unit_of_work() as session:
        assert (await ledger.verify(session)).is_clean


async def test_expiries_racing_new_holds_never_oversell(
    api: Api, database: Database, clock: FrozenClock
) -> None:
    """Ten sessions hold all ten units; at their expiry the worker's expiries run at the
    same time as 40 new buyers. New buyers get units only as expiries free them, never
    more than ten in all, and every held unit belongs to exactly one open session."""
    sk, price = await _stocked_shop(api, units=10)
    first = [await _open_session(api, sk, price, n) for n in range(10)]
    assert {r.status_code for r in first} == {201}
    clock.advance(timedelta(minutes=31))

    async def expire(session_id: str) -> bool:
        async with database.unit_of_work() as session:
            return await checkout.expire_session(
                session, session_id=session_id, base_url="http://testserver", now=clock.now()
            )

    expiries = [expire(r.json()["id"]) for r in first]
    buyers = [_open_session(api, sk, price, 100 + n) for n in range(40)]
    results = await asyncio.gather(*expiries, *buyers)

    expired, opened = results[:10], results[10:]
    assert expired == [True] * 10
    assert all(isinstance(r, httpx.Response) for r in opened)
    statuses = Counter(r.status_code for r in opened if isinstance(r, httpx.Response))
    assert set(statuses) <= {201, 409}
    held = statuses[201]
    assert 0 <= held <= 10
    assert await _totals(api, sk) == (10, held, 0, 10 - held)
    held_rows = await _count(
        database,
        select(func.coalesce(func.sum(StockReservation.quantity), 0))
        .join(CheckoutSession, CheckoutSession.id == StockReservation.checkout_session_id)
        .where(StockReservation.status == "held", CheckoutSession.status == "open"),
    )
    assert held_rows == held
    # Whatever lost the race can buy now: the units are back.
    late = [await _open_session(api, sk, price, 200 + n) for n in range(10 - held)]
    assert {r.status_code for r in late} <= {201}
    assert await _totals(api, sk) == (10, 10, 0, 0)


async def test_a_slow_gateway_does_not_stop_other_buyers_from_holding_stock(
    api: Api, database: Database, gateway: SlowGateway
) -> None:
    sk, price = await _stocked_shop(api, units=20)
    first = await _open_session(api, sk, price, 0)
    gateway.is_slow = True
    paying = asyncio.create_task(api.confirm(sk, first.json()["id"]))
    entered = asyncio.create_task(gateway.entered.wait())
    await asyncio.wait({entered, paying}, return_when=asyncio.FIRST_COMPLETED)
    assert gateway.entered.is_set(), "the confirm ended before reaching the gateway"

    storm = await asyncio.gather(*(_open_session(api, sk, price, n) for n in range(1, 30)))

    # All while the first buyer's charge is still at the gateway.
    assert not paying.done()
    assert Counter(r.status_code for r in storm) == {201: 19, 409: 10}
    assert await _totals(api, sk) == (20, 20, 0, 0)
    gateway.release.set()
    paid = await paying
    assert (paid.status_code, paid.json()["status"]) == (200, "complete")
    assert await _totals(api, sk) == (20, 19, 1, 0)


async def test_50_buyers_with_one_email_and_a_limit_of_1_make_one_order(
    api: Api, database: Database, clock: FrozenClock
) -> None:
    sk, price = await _stocked_shop(api, units=20)
    created = await api.http.post(
        "/v1/drops",
        headers=bearer(sk),
        json={
            "name": "Winter mugs",
            "opens_at": clock.now().isoformat(),
            "closes_at": (clock.now() + timedelta(hours=1)).isoformat(),
            "per_customer_limit": 1,
            "items": [{"price": price, "quantity": 20}],
        },
    )
    assert created.status_code == 201, created.text
    # Five tabs each of ten spellings of one Gmail address.
    spellings = [
        f"{'Jane.Doe' if n % 2 else 'janedoe'}+tab{n}@{'gmail' if n % 3 else 'googlemail'}.com"
        for n in range(10)
    ]

    async def buyer(number: int) -> tuple[int, str | None]:
        opened = await api.http.post(
            "/v1/checkout/sessions",
            headers=bearer(sk),
            json={
                "line_items": [{"price": price, "quantity": 1}],
                "customer_email": spellings[number % 10],
            },
        )
        if opened.status_code != 201:
            return opened.status_code, opened.json()["type"]
        paid = await api.confirm(sk, opened.json()["id"])
        return paid.status_code, paid.json()["status"]

    outcomes = await asyncio.gather(*(buyer(n) for n in range(50)))

    assert Counter(outcomes) == {
        (200, "complete"): 1,
        (409, "https://stallholder.dev/problems/drop-limit-reached"): 49,
    }
    assert await _count(database, select(func.count()).select_from(Order)) == 1
    assert await _totals(api, sk) == (20, 0, 1, 19)
    drop = (await api.http.get(f"/v1/drops/{created.json()['id']}", headers=bearer(sk))).json()
    assert (drop["remaining"], drop["items"][0]["sold"], drop["items"][0]["held"]) == (19, 1, 0)


async def test_holds_of_two_skus_in_opposite_orders_never_deadlock(api: Api) -> None:
    """Half the buyers list the mug first, half the saucer: the levels are locked in key
    order whatever the order of the lines, so no two holds wait on each other."""
    sk, mug = await _stocked_shop(api, units=15)
    product = await api.product(sk, name="Saucer", variants=[{"sku": "SAUCER"}])
    saucer = (await api.price(sk, product=product["id"], unit_amount=1200))["id"]
    location = (await api.http.get("/v1/locations", headers=bearer(sk))).json()["data"][0]["id"]
    await api.http.post(
        "/v1/inventory/adjustments",
        headers=bearer(sk),
        json={"sku": "SAUCER", "location": location, "delta": 15, "reason": "firing"},
    )

    async def buyer(number: int) -> int:
        lines = [{"price": mug, "quantity": 1}, {"price": saucer, "quantity": 1}]
        response = await api.http.post(
            "/v1/checkout/sessions",
            headers=bearer(sk),
            json={
                "line_items": lines if number % 2 else lines[::-1],
                "customer_email": f"buyer{number}@example.com",
            },
        )
        return response.status_code

    statuses = Counter(await asyncio.gather(*(buyer(n) for n in range(40))))

    assert statuses == {201: 15, 409: 25}
    assert await _totals(api, sk) == (15, 15, 0, 0)
    saucers = (await api.http.get("/v1/inventory/SAUCER", headers=bearer(sk))).json()
    assert (saucers["reserved"], saucers["available"]) == (15, 0)


async def test_200_buyers_for_a_drop_of_10_make_exactly_10_orders(
    api: Api, database: Database, clock: FrozenClock
) -> None:
    """The drop's own quantity is the cap (the mug is not tracked here)."""
    creator, price = await api.shop(unit_amount=4800)
    sk = creator["secret_key"]
    created = await api.http.post(
        "/v1/drops",
        headers=bearer(sk),
        json={
            "name": "Ten mugs",
            "opens_at": clock.now().isoformat(),
            "closes_at": (clock.now() + timedelta(hours=1)).isoformat(),
            "items": [{"price": price["id"], "quantity": 10}],
        },
    )
    drop_id = created.json()["id"]

    async def buyer(number: int) -> tuple[int, str | None]:
        opened = await _open_session(api, sk, price["id"], number)
        if opened.status_code != 201:
            return opened.status_code, opened.json()["type"]
        paid = await api.confirm(sk, opened.json()["id"])
        return paid.status_code, paid.json()["status"]

    outcomes = await asyncio.gather(*(buyer(n) for n in range(200)))

    assert Counter(outcomes) == {(200, "complete"): 10, (409, OUT_OF_STOCK): 190}
    assert await _count(database, select(func.count()).select_from(Order)) == 10
    drop = (await api.http.get(f"/v1/drops/{drop_id}", headers=bearer(sk))).json()
    assert (drop["status"], drop["items"][0]["sold"], drop["items"][0]["held"]) == (
        "sold_out",
        10,
        0,
    )
