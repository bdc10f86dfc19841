"""Drops over HTTP, on SQLite and PostgreSQL: a window, a quantity per price, a short
hold, and a per-customer limit across a buyer's open sessions and orders."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from stallholder.checkout.models import CheckoutSession
from stallholder.events.models import Event
from stallholder.inventory import drops
from stallholder.inventory.models import DropBuyer, DropClaim, DropItem
from stallholder.jobs.worker import Worker
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from tests.conftest import T0, Api, bearer

pytestmark = pytest.mark.anyio
PROBLEM = "https://stallholder.dev/problems/"
OPENS = T0 + timedelta(hours=1)
CLOSES = T0 + timedelta(hours=3)


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


class DropShop:
    def __init__(self, api: Api, creator: dict[str, Any], price: str) -> None:
        self.api = api
        self.sk: str = creator["secret_key"]
        self.pk: str = creator["publishable_key"]
        self.price = price

    async def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return await self.api.http.post(path, headers=bearer(self.sk), json=body)

    async def drop(self, **overrides: Any) -> httpx.Response:
        body = {
            "name": "Winter mugs",
            "opens_at": OPENS.isoformat(),
            "closes_at": CLOSES.isoformat(),
            "per_customer_limit": 2,
            "items": [{"price": self.price, "quantity": 3}],
            **overrides,
        }
        return await self.post("/v1/drops", body)

    async def get(self, drop_id: str, key: str | None = None) -> dict[str, Any]:
        response = await self.api.http.get(f"/v1/drops/{drop_id}", headers=bearer(key or self.sk))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def session(self, email: str, quantity: int = 1) -> httpx.Response:
        return await self.post(
            "/v1/checkout/sessions",
            {"line_items": [{"price": self.price, "quantity": quantity}], "customer_email": email},
        )


async def winter_mug_shop(api: Api) -> DropShop:
    """A creator with one $48.00 price of a "Winter mug", to put in drops."""
    creator = await api.creator(name="Kiln & Clay")
    product = await api.product(creator["secret_key"], name="Winter mug")
    price = await api.price(creator["secret_key"], product=product["id"], unit_amount=4800)
    return DropShop(api, creator, price["id"])


@pytest.fixture
async def shop(api: Api) -> DropShop:
    return await winter_mug_shop(api)


async def test_a_drop_opens_sells_out_and_closes(
    shop: DropShop, clock: FrozenClock, api: Api, database: Database
) -> None:
    created = await shop.drop(reservation_minutes=10)
    assert created.status_code == 201, created.text
    drop = created.json()
    assert (drop["status"], drop["remaining"], drop["mode"]) == ("scheduled", 3, "first_come")
    assert drop["items"] == [
        {"price": shop.price, "quantity": 3, "held": 0, "sold": 0, "remaining": 3}
    ]

    early = await shop.session("a@example.com")
    assert (early.status_code, early.json()["type"]) == (409, PROBLEM + "drop-not-open")
    assert early.json()["opens_at"] == OPENS.isoformat()

    clock.set(OPENS)
    first = await shop.session("a@example.com", quantity=2)
    assert first.status_code == 201, first.text
    # Held for the drop's 10 minutes, not the usual 30.
    assert first.json()["expires_at"] == (OPENS + timedelta(minutes=10)).isoformat().replace(
        "+00:00", "Z"
    )
    paid = await api.confirm(shop.sk, first.json()["id"])
    assert paid.status_code == 200, paid.text
    second = await shop.session("b@example.com")
    assert second.status_code == 201
    now = await shop.get(drop["id"])
    assert (now["status"], now["remaining"]) == ("sold_out", 0)
    assert now["items"][0] | {"price": ""} == {
        "price": "",
        "quantity": 3,
        "held": 1,
        "sold": 2,
        "remaining": 0,
    }
    none_left = await shop.session("c@example.com")
    assert (none_left.status_code, none_left.json()["type"]) == (409, PROBLEM + "out-of-stock")
    assert (none_left.json()["available"], none_left.json()["drop"]) == (0, drop["id"])

    # The unpaid hold expires after 10 minutes and the unit is back on sale.
    clock.advance(timedelta(minutes=10))
    await Worker(database, clock).run_once()
    assert (await shop.get(drop["id"]))["status"] == "open"

    clock.set(CLOSES)
    late = await shop.session("d@example.com")
    assert (late.status_code, late.json()["type"]) == (409, PROBLEM + "drop-closed")
    assert (await shop.get(drop["id"]))["status"] == "closed"


async def test_the_per_customer_limit_counts_open_sessions_and_orders_by_normalised_email(
    shop: DropShop, clock: FrozenClock, api: Api
) -> None:
    drop = (await shop.drop(items=[{"price": shop.price, "quantity": 10}])).json()
    clock.set(OPENS)
    first = await shop.session("Jane.Doe@gmail.com")
    await api.confirm(shop.sk, first.json()["id"])
    held = await shop.session("janedoe+second-tab@googlemail.com")
    third = await shop.session("JANEDOE@gmail.com")
    other = await shop.session("jane.doe@example.com")

    assert (first.status_code, held.status_code, other.status_code) == (201, 201, 201)
    assert third.status_code == 409
    assert third.json() | {"detail": ""} == {
        "type": PROBLEM + "drop-limit-reached",
        "title": "The buyer has reached the drop's per-customer limit",
        "status": 409,
        "detail": "",
        "instance": "/v1/checkout/sessions",
        "drop": drop["id"],
        "per_customer_limit": 2,
        "already": 2,
    }
    # Expiring the open session gives the buyer one unit of room again.
    expired = await shop.post(f"/v1/checkout/sessions/{held.json()['id']}/expire", {})
    assert expired.status_code == 200
    assert (await shop.session("janedoe@gmail.com")).status_code == 201
    assert (await shop.get(drop["id"]))["remaining"] == 7


async def test_drop_errors_name_what_to_fix(shop: DropShop, api: Api) -> None:
    backwards = await shop.drop(closes_at=OPENS.isoformat(), opens_at=CLOSES.isoformat())
    naive = await shop.drop(opens_at="2026-03-01T13:00:00")
    unknown = await shop.drop(items=[{"price": "price_nope", "quantity": 1}])
    twice = await shop.drop(
        items=[{"price": shop.price, "quantity": 1}, {"price": shop.price, "quantity": 2}]
    )
    raffle = await shop.drop(mode="lottery")
    no_items = await shop.drop(items=[])
    first = await shop.drop()
    again = await shop.drop()
    missing = await api.http.get("/v1/drops/drop_nope", headers=bearer(shop.sk))

    assert (backwards.status_code, backwards.json()["type"]) == (400, PROBLEM + "invalid-request")
    assert (unknown.status_code, unknown.json()["type"]) == (400, PROBLEM + "invalid-drop-item")
    assert (twice.status_code, twice.json()["type"]) == (400, PROBLEM + "invalid-drop-item")
    for response in (naive, raffle, no_items):
        assert response.status_code == 422, response.text
    assert first.status_code == 201
    assert (again.status_code, again.json()["type"]) == (409, PROBLEM + "price-in-another-drop")
    assert (missing.status_code, missing.json()["type"]) == (404, PROBLEM + "drop-not-found")


async def test_a_limited_drop_needs_the_buyers_email_and_shows_to_publishable_keys(
    shop: DropShop, clock: FrozenClock, api: Api
) -> None:
    creator = await api.creator(name="Another")
    drop = (await shop.drop()).json()
    clock.set(OPENS)
    anonymous = await shop.post(
        "/v1/checkout/sessions", {"line_items": [{"price": shop.price, "quantity": 1}]}
    )
    assert (anonymous.status_code, anonymous.json()["type"]) == (
        400,
        PROBLEM + "customer-email-required",
    )
    response = await api.http.get(
        f"/v1/drops/{drop['id']}", headers=bearer(creator["publishable_key"])
    )
    assert response.status_code == 404
    assert (await shop.get(drop["id"], key=shop.pk))["status"] == "open"


async def test_drop_events_announce_opening_sell_out_and_closing_once(
    shop: DropShop, clock: FrozenClock, api: Api, database: Database
) -> None:
    created = await shop.drop(per_customer_limit=None)
    assert created.status_code == 201, created.text
    worker = Worker(database, clock)
    clock.set(OPENS)
    await worker.run_once()
    await worker.run_once()
    taken = [await shop.session(f"fan{n}@example.com") for n in range(3)]
    assert [response.status_code for response in taken] == [201, 201, 201]
    assert (await api.confirm(shop.sk, taken[0].json()["id"])).status_code == 200
    # Two unpaid holds expire and the drop is open again; selling out again is announced again.
    clock.advance(timedelta(minutes=10))
    await worker.run_once()
    again = [await shop.session(f"fan{n}@example.com") for n in (8, 9)]
    assert [response.status_code for response in again] == [201, 201]
    for response in again:
        assert (await api.confirm(shop.sk, response.json()["id"])).status_code == 200
    clock.set(CLOSES)
    await worker.run_once()
    await worker.run_once()

    async with database.unit_of_work() as session:
        events = (
            await session.execute(
                select(Event).where(Event.type.like("drop.%")).order_by(Event.created_at, Event.id)
            )
        ).scalars()
        seen = [(event.type, event.data["status"], event.data["remaining"]) for event in events]
    assert seen == [
        ("drop.opened", "open", 3),
        ("drop.sold_out", "sold_out", 0),
        ("drop.sold_out", "sold_out", 0),
        ("drop.closed", "closed", 0),
    ]


@pytest.mark.parametrize("idempotency_key", ["buy-1", None])
async def test_a_unit_taken_between_the_read_and_the_commit_is_an_out_of_stock_answer(
    shop: DropShop,
    clock: FrozenClock,
    api: Api,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
    idempotency_key: str | None,
) -> None:
    """The drop item's conditional update runs at the commit (ADR 0024). When the last
    unit goes after the prices were read (here: taken in the same transaction, as another
    buyer's commit would on PostgreSQL), the commit refuses: a 409 ``out-of-stock``,
    nothing written, and with a key the answer is kept and replayed."""
    drop = (await shop.drop(items=[{"price": shop.price, "quantity": 1}])).json()
    clock.set(OPENS)
    real_admit = drops.admit

    async def admit_then_lose_the_unit(session: Any, **kwargs: Any) -> Any:
        admission = await real_admit(session, **kwargs)
        await session.execute(update(DropItem).values(held=DropItem.quantity))
        return admission

    monkeypatch.setattr(drops, "admit", admit_then_lose_the_unit)
    headers = bearer(shop.sk) | ({"Idempotency-Key": idempotency_key} if idempotency_key else {})
    body = {"line_items": [{"price": shop.price, "quantity": 1}], "customer_email": "a@ex.com"}
    refused = await api.http.post("/v1/checkout/sessions", headers=headers, json=body)
    monkeypatch.undo()

    assert refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"
    sku = refused.json()["sku"]
    assert sku.startswith("winter-mug-")
    assert refused.json() == {
        "type": PROBLEM + "out-of-stock",
        "title": "Not enough stock",
        "status": 409,
        "detail": f"{sku} is sold out in drop {drop['id']} (1 asked for)",
        "instance": "/v1/checkout/sessions",
        "sku": sku,
        "available": 0,
        "requested": 1,
        "drop": drop["id"],
    }
    async with database.read() as session:
        assert (
            await session.execute(select(func.count()).select_from(CheckoutSession))
        ).scalar_one() == 0
        assert (
            await session.execute(select(func.count()).select_from(DropClaim))
        ).scalar_one() == 0
        assert (await session.execute(select(DropBuyer.units))).scalars().all() == []
    shown = await shop.get(drop["id"])
    assert (shown["remaining"], shown["items"][0]["held"]) == (1, 0)
    again = await api.http.post("/v1/checkout/sessions", headers=headers, json=body)
    if idempotency_key is None:  # a new request: the unit is there
        assert again.status_code == 201, again.text
    else:  # the kept answer
        assert again.status_code == 409
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == refused.json()
