"""Locations, stock, the movement ledger and checkout holds over HTTP, on SQLite and
PostgreSQL: every route, and every error a client can cause."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from stallholder.jobs.worker import Worker
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from tests.conftest import Api, bearer

pytestmark = pytest.mark.anyio
PROBLEM = "https://stallholder.dev/problems/"


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


class Shop:
    """A creator selling a 20-piece mug (SKU ``MUG-W``) at a workshop."""

    def __init__(self, api: Api, creator: dict[str, Any], price: dict[str, Any]) -> None:
        self.api = api
        self.sk: str = creator["secret_key"]
        self.price: str = price["id"]

    async def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return await self.api.http.post(path, headers=bearer(self.sk), json=body)

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.api.http.get(path, headers=bearer(self.sk), params=params)

    async def location(self, name: str) -> str:
        response = await self.post("/v1/locations", {"name": name})
        assert response.status_code == 201, response.text
        location: str = response.json()["id"]
        return location

    async def adjust(self, **body: Any) -> httpx.Response:
        return await self.post("/v1/inventory/adjustments", {"sku": "MUG-W", **body})

    async def stock(self) -> dict[str, Any]:
        response = await self.get("/v1/inventory/MUG-W")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def totals(self) -> tuple[int, int, int, int]:
        stock = await self.stock()
        return (stock["on_hand"], stock["reserved"], stock["allocated"], stock["available"])

    async def session(self, quantity: int = 1) -> httpx.Response:
        return await self.post(
            "/v1/checkout/sessions",
            {
                "line_items": [{"price": self.price, "quantity": quantity}],
                "customer_email": "buyer@example.com",
            },
        )


@pytest.fixture
async def shop(api: Api) -> Shop:
    creator = await api.creator(name="Kiln & Clay")
    product = await api.product(
        creator["secret_key"],
        name="Winter mug",
        variants=[{"sku": "MUG-W", "name": "Winter glaze"}],
    )
    price = await api.price(creator["secret_key"], product=product["id"], unit_amount=4800)
    return Shop(api, creator, price)


async def test_locations_are_created_listed_and_named_once(shop: Shop) -> None:
    workshop = await shop.location("Workshop")
    partner = await shop.location("Fulfilment partner")
    again = await shop.post("/v1/locations", {"name": "Workshop"})
    listed = await shop.get("/v1/locations", limit=1)
    rest = await shop.get("/v1/locations", starting_after=partner)

    assert (again.status_code, again.json()["type"]) == (409, PROBLEM + "location-name-taken")
    assert listed.json()["data"][0]["id"] == partner
    assert listed.json()["has_more"] is True
    assert [loc["id"] for loc in rest.json()["data"]] == [workshop]
    empty = await shop.post("/v1/locations", {"name": ""})
    assert empty.status_code == 422


async def test_untracked_until_stock_arrives_then_adjusted_by_delta_and_set(shop: Shop) -> None:
    before = await shop.stock()
    assert (before["tracked"], before["locations"], before["available"]) == (False, [], 0)
    workshop = await shop.location("Workshop")

    received = await shop.adjust(location=workshop, delta=20, kind="received", reason="kiln 12")
    counted = await shop.adjust(location=workshop, set=18, reason="count: two cracked")
    buffered = await shop.adjust(location=workshop, safety_stock=2, low_stock_threshold=3)

    assert received.status_code == 200, received.text
    assert received.json()["on_hand"] == 20
    assert counted.json()["on_hand"] == 18
    stock = buffered.json()
    assert stock["tracked"] is True
    assert (stock["on_hand"], stock["safety_stock"], stock["available"]) == (18, 2, 16)
    assert stock["locations"] == [
        {
            "location": workshop,
            "location_name": "Workshop",
            "on_hand": 18,
            "reserved": 0,
            "allocated": 0,
            "safety_stock": 2,
            "available": 16,
            "low_stock_threshold": 3,
        }
    ]
    movements = (await shop.get("/v1/inventory/MUG-W/movements")).json()["data"]
    assert [(m["kind"], m["quantity"], m["on_hand_after"], m["reason"]) for m in movements] == [
        ("adjusted", -2, 18, "count: two cracked"),
        ("received", 20, 20, "kiln 12"),
    ]
    assert {m["actor"] for m in movements} == {"secret_key"}


async def test_movements_are_cursor_paginated(shop: Shop) -> None:
    workshop = await shop.location("Workshop")
    for delta in (5, 3, 2):
        await shop.adjust(location=workshop, delta=delta, kind="received", reason="batch")
    first = (await shop.get("/v1/inventory/MUG-W/movements", limit=2)).json()
    rest = (
        await shop.get(
            "/v1/inventory/MUG-W/movements", limit=2, starting_after=first["data"][-1]["id"]
        )
    ).json()
    assert [m["quantity"] for m in first["data"]] == [2, 3]
    assert first["has_more"] is True
    assert ([m["quantity"] for m in rest["data"]], rest["has_more"]) == ([5], False)
    bad = await shop.get("/v1/inventory/MUG-W/movements", starting_after="mov_nope")
    assert (bad.status_code, bad.json()["type"]) == (400, PROBLEM + "invalid-cursor")


async def test_adjustment_errors_name_what_to_fix(shop: Shop) -> None:
    workshop = await shop.location("Workshop")
    await shop.adjust(location=workshop, delta=2, kind="received", reason="kiln")
    held = await shop.session(quantity=2)
    assert held.status_code == 201, held.text

    committed = await shop.adjust(location=workshop, delta=-1, kind="damaged", reason="dropped")
    unknown_sku = await shop.post(
        "/v1/inventory/adjustments",
        {"sku": "NOPE", "location": workshop, "delta": 1, "reason": "x"},
    )
    unknown_location = await shop.adjust(location="loc_nope", delta=1, reason="x")
    both = await shop.adjust(location=workshop, delta=1, set=3, reason="x")
    neither = await shop.adjust(location=workshop, reason="x")
    zero = await shop.adjust(location=workshop, delta=0, reason="x")
    negative_count = await shop.adjust(location=workshop, set=-1, reason="x")
    float_delta = await shop.adjust(location=workshop, delta=1.5, reason="x")
    sold_kind = await shop.adjust(location=workshop, delta=1, kind="sold", reason="x")

    assert (committed.status_code, committed.json()["type"]) == (409, PROBLEM + "stock-committed")
    assert (committed.json()["on_hand"], committed.json()["committed"]) == (2, 2)
    assert (unknown_sku.status_code, unknown_sku.json()["type"]) == (404, PROBLEM + "sku-not-found")
    assert (unknown_location.status_code, unknown_location.json()["type"]) == (
        404,
        PROBLEM + "location-not-found",
    )
    for response in (both, neither, zero, negative_count, float_delta, sold_kind):
        assert response.status_code == 422, response.text
    assert await shop.totals() == (2, 2, 0, 0)
    missing = await shop.get("/v1/inventory/NOPE")
    assert (missing.status_code, missing.json()["sku"]) == (404, "NOPE")


async def test_transfers_move_free_units_only(shop: Shop) -> None:
    workshop = await shop.location("Workshop")
    partner = await shop.location("Partner")
    await shop.adjust(location=workshop, delta=5, kind="received", reason="kiln")
    assert (await shop.session(quantity=2)).status_code == 201

    moved = await shop.post(
        "/v1/inventory/transfers",
        {"sku": "MUG-W", "from_location": workshop, "to_location": partner, "quantity": 3},
    )
    too_many = await shop.post(
        "/v1/inventory/transfers",
        {"sku": "MUG-W", "from_location": workshop, "to_location": partner, "quantity": 1},
    )
    same = await shop.post(
        "/v1/inventory/transfers",
        {"sku": "MUG-W", "from_location": partner, "to_location": partner, "quantity": 1},
    )
    unknown = await shop.post(
        "/v1/inventory/transfers",
        {"sku": "MUG-W", "from_location": partner, "to_location": "loc_x", "quantity": 1},
    )

    assert moved.status_code == 200, moved.text
    by_location = {level["location"]: level for level in moved.json()["locations"]}
    assert (by_location[workshop]["on_hand"], by_location[workshop]["reserved"]) == (2, 2)
    assert (by_location[partner]["on_hand"], by_location[partner]["available"]) == (3, 3)
    assert (too_many.status_code, too_many.json()["type"]) == (409, PROBLEM + "insufficient-stock")
    assert too_many.json()["available"] == 0
    assert (same.status_code, same.json()["type"]) == (400, PROBLEM + "same-location")
    assert (unknown.status_code, unknown.json()["type"]) == (404, PROBLEM + "location-not-found")
    movements = (await shop.get("/v1/inventory/MUG-W/movements")).json()["data"]
    transfers = [m for m in movements if m["kind"] == "transferred"]
    assert sorted((m["location"], m["quantity"]) for m in transfers) == sorted(
        [(workshop, -3), (partner, 3)]
    )
    assert len({m["reference"] for m in transfers}) == 1


async def test_a_session_holds_stock_and_out_of_stock_names_the_sku(shop: Shop) -> None:
    workshop = await shop.location("Workshop")
    await shop.adjust(location=workshop, delta=3, kind="received", reason="kiln")

    first = await shop.session(quantity=2)
    too_many = await shop.session(quantity=2)
    last = await shop.session(quantity=1)
    none_left = await shop.session(quantity=1)

    assert first.status_code == 201
    assert too_many.status_code == 409
    assert (
        too_many.json()["detail"]
        == "MUG-W has 1 left; 2 asked for. Lower the quantity to at most 1"
    )
    assert too_many.json() | {"detail": ""} == {
        "type": PROBLEM + "out-of-stock",
        "title": "Not enough stock",
        "status": 409,
        "detail": "",
        "instance": "/v1/checkout/sessions",
        "sku": "MUG-W",
        "available": 1,
        "requested": 2,
    }
    assert last.status_code == 201
    assert (none_left.json()["sku"], none_left.json()["available"]) == ("MUG-W", 0)
    assert await shop.totals() == (3, 3, 0, 0)


async def test_paying_allocates_and_a_refund_with_restock_returns_it(shop: Shop) -> None:
    workshop = await shop.location("Workshop")
    await shop.adjust(location=workshop, delta=3, kind="received", reason="kiln")
    session = (await shop.session(quantity=2)).json()

    paid = await shop.api.confirm(shop.sk, session["id"])
    after_payment = await shop.totals()
    plain = await shop.post("/v1/refunds", {"order": paid.json()["order"], "amount": 100})
    after_plain_refund = await shop.totals()
    restocked = await shop.post("/v1/refunds", {"order": paid.json()["order"], "restock": True})

    assert paid.status_code == 200, paid.text
    assert after_payment == (3, 0, 2, 1)
    assert (plain.status_code, plain.json()["restock"]) == (201, False)
    assert after_plain_refund == (3, 0, 2, 1)
    assert (restocked.status_code, restocked.json()["restock"]) == (201, True)
    assert await shop.totals() == (3, 0, 0, 3)


async def test_expiry_and_cancel_release_at_once(
    shop: Shop, database: Database, clock: FrozenClock
) -> None:
    workshop = await shop.location("Workshop")
    await shop.adjust(location=workshop, delta=2, kind="received", reason="kiln")
    expiring = (await shop.session()).json()
    cancelled = (await shop.session()).json()
    assert await shop.totals() == (2, 2, 0, 0)

    expired_now = await shop.post(f"/v1/checkout/sessions/{cancelled['id']}/expire", {})
    assert (expired_now.status_code, expired_now.json()["status"]) == (200, "expired")
    assert await shop.totals() == (2, 1, 0, 1)
    again = await shop.post(f"/v1/checkout/sessions/{cancelled['id']}/expire", {})
    assert (again.status_code, again.json()["type"]) == (409, PROBLEM + "checkout-session-not-open")
    assert (again.json()["status"], again.json()["session_status"]) == (409, "expired")
    missing = await shop.post("/v1/checkout/sessions/cs_nope/expire", {})
    assert missing.status_code == 404

    clock.advance(timedelta(minutes=31))
    await Worker(database, clock).run_once()
    assert await shop.totals() == (2, 0, 0, 2)
    confirm = await shop.api.confirm(shop.sk, expiring["id"])
    assert (confirm.status_code, confirm.json()["type"]) == (
        409,
        PROBLEM + "checkout-session-expired",
    )
    assert await shop.totals() == (2, 0, 0, 2)


async def test_untracked_products_sell_without_limit(api: Api) -> None:
    creator, price = await api.shop()
    for _ in range(3):
        session = await api.session(creator["secret_key"], price=price["id"], quantity=50)
        assert session["status"] == "open"


async def test_low_and_out_of_stock_events(shop: Shop) -> None:
    workshop = await shop.location("Workshop")
    await shop.adjust(
        location=workshop, delta=3, kind="received", reason="kiln", low_stock_threshold=1
    )
    await shop.session(quantity=2)  # available 1: low
    await shop.session(quantity=1)  # available 0: out of stock
    events = (await shop.get("/v1/events", limit=20)).json()["data"]
    inventory = [
        (e["type"], e["data"]["object"]["available"])
        for e in reversed(events)
        if e["type"].startswith("inventory.")
    ]
    assert inventory == [("inventory.low", 1), ("inventory.out_of_stock", 0)]


async def test_holds_draw_from_locations_in_creation_order_and_all_or_nothing(
    shop: Shop, api: Api
) -> None:
    workshop = await shop.location("Workshop")
    partner = await shop.location("Partner")
    await shop.adjust(location=workshop, delta=2, kind="received", reason="kiln")
    await shop.adjust(location=partner, delta=2, kind="received", reason="kiln")
    other = await api.product(shop.sk, name="Saucer", variants=[{"sku": "SAUCER"}])
    saucer = await api.price(shop.sk, product=other["id"], unit_amount=1200)
    await shop.post(
        "/v1/inventory/adjustments",
        {"sku": "SAUCER", "location": partner, "delta": 1, "kind": "received", "reason": "k"},
    )

    split = await shop.session(quantity=3)
    both = await shop.post(
        "/v1/checkout/sessions",
        {
            "line_items": [
                {"price": shop.price, "quantity": 1},
                {"price": saucer["id"], "quantity": 2},
            ],
            "customer_email": "buyer@example.com",
        },
    )

    assert split.status_code == 201
    by_location = {level["location"]: level for level in (await shop.stock())["locations"]}
    assert (by_location[workshop]["reserved"], by_location[partner]["reserved"]) == (2, 1)
    assert (both.status_code, both.json()["sku"], both.json()["available"]) == (409, "SAUCER", 1)
    # The mug of the refused session is not held.
    assert await shop.totals() == (4, 3, 0, 1)
    saucers = (await shop.get("/v1/inventory/SAUCER")).json()
    assert (saucers["reserved"], saucers["available"]) == (0, 1)
