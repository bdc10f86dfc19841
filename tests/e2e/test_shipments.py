"""Shipping an order over HTTP, on SQLite and PostgreSQL: the allocation becomes a ``sold``
movement, the buyer gets an email with the tracking (a real SMTP server), a refund with
restock after shipping brings the units back with a ``returned`` movement, and every
mistake is a clear 4xx."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from stallholder.jobs.worker import Worker
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.settings import Settings
from tests.conftest import Api, bearer
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.anyio
PROBLEM = "https://stallholder.dev/problems/"


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


class Workshop:
    """A creator with 5 tracked mugs (``MUG-W``) and an untracked digital zine."""

    def __init__(self, api: Api, sk: str, mug: str, zine: str) -> None:
        self.api, self.sk, self.mug, self.zine = api, sk, mug, zine

    async def post(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return await self.api.http.post(path, headers=bearer(self.sk), json=body or {})

    async def get(self, path: str) -> httpx.Response:
        return await self.api.http.get(path, headers=bearer(self.sk))

    async def buy(self, price: str, quantity: int) -> str:
        session = await self.api.session(self.sk, price=price, quantity=quantity)
        confirmed = await self.api.confirm(self.sk, session["id"])
        assert confirmed.status_code == 200, confirmed.text
        order: str = confirmed.json()["order"]
        return order

    async def totals(self) -> tuple[int, int, int, int]:
        stock = (await self.get("/v1/inventory/MUG-W")).json()
        return (stock["on_hand"], stock["reserved"], stock["allocated"], stock["available"])

    async def movements(self) -> list[tuple[str, int, int, str | None]]:
        body = (await self.get("/v1/inventory/MUG-W/movements")).json()
        return [
            (m["kind"], m["quantity"], m["on_hand_after"], m["reference"])
            for m in reversed(body["data"])
        ]


@pytest.fixture
async def workshop(api: Api) -> Workshop:
    creator = await api.creator(name="Kiln & Clay")
    sk = creator["secret_key"]
    mug = await api.product(sk, name="Winter mug", variants=[{"sku": "MUG-W", "name": "Glaze"}])
    mug_price = await api.price(sk, product=mug["id"], unit_amount=4800)
    zine = await api.product(sk, name="Studio notes", kind="digital")
    zine_price = await api.price(sk, product=zine["id"], unit_amount=300)
    location = await api.http.post("/v1/locations", headers=bearer(sk), json={"name": "Shelf"})
    received = await api.http.post(
        "/v1/inventory/adjustments",
        headers=bearer(sk),
        json={
            "sku": "MUG-W",
            "location": location.json()["id"],
            "delta": 5,
            "kind": "received",
            "reason": "kiln",
        },
    )
    assert received.status_code == 200, received.text
    return Workshop(api, sk, mug_price["id"], zine_price["id"])


async def test_shipping_turns_the_allocation_into_a_sold_movement(workshop: Workshop) -> None:
    order = await workshop.buy(workshop.mug, 2)
    assert await workshop.totals() == (5, 0, 2, 3)

    shipped = await workshop.post(
        f"/v1/orders/{order}/shipments",
        {
            "carrier": "Royal Mail",
            "tracking_number": "RM123456785GB",
            "tracking_url": "https://track.example/RM123456785GB",
        },
    )

    assert shipped.status_code == 201, shipped.text
    shipment = shipped.json()
    assert shipment["id"].startswith("shp_")
    assert {k: v for k, v in shipment.items() if k not in ("id", "created")} == {
        "object": "shipment",
        "order": order,
        "carrier": "Royal Mail",
        "tracking_number": "RM123456785GB",
        "tracking_url": "https://track.example/RM123456785GB",
        "items": [{"sku": "MUG-W", "description": "Winter mug", "quantity": 2}],
    }
    assert await workshop.totals() == (3, 0, 0, 3)
    assert await workshop.movements() == [
        ("received", 5, 5, None),
        ("sold", -2, 3, shipment["id"]),
    ]
    listed = (await workshop.get(f"/v1/orders/{order}/shipments")).json()
    assert [s["id"] for s in listed["data"]] == [shipment["id"]]
    assert (await workshop.get(f"/v1/shipments/{shipment['id']}")).json() == shipment


async def test_an_order_ships_once(workshop: Workshop) -> None:
    order = await workshop.buy(workshop.mug, 1)
    first = await workshop.post(f"/v1/orders/{order}/shipments")
    again = await workshop.post(f"/v1/orders/{order}/shipments", {"carrier": "DHL"})

    assert first.status_code == 201, first.text
    assert (again.status_code, again.json()["type"]) == (409, PROBLEM + "order-already-shipped")
    assert again.json()["shipment"] == first.json()["id"]
    assert await workshop.totals() == (4, 0, 0, 4)


async def test_a_refund_with_restock_after_shipping_returns_the_units(
    workshop: Workshop,
) -> None:
    order = await workshop.buy(workshop.mug, 2)
    shipment = (await workshop.post(f"/v1/orders/{order}/shipments")).json()

    refund = await workshop.post("/v1/refunds", {"order": order, "restock": True})

    assert refund.status_code == 201, refund.text
    assert await workshop.totals() == (5, 0, 0, 5)
    assert await workshop.movements() == [
        ("received", 5, 5, None),
        ("sold", -2, 3, shipment["id"]),
        ("returned", 2, 5, refund.json()["id"]),
    ]


async def test_what_cannot_be_shipped_is_a_conflict_that_says_why(workshop: Workshop) -> None:
    digital = await workshop.buy(workshop.zine, 1)
    restocked = await workshop.buy(workshop.mug, 1)
    await workshop.post("/v1/refunds", {"order": restocked, "amount": 100, "restock": True})

    no_goods = await workshop.post(f"/v1/orders/{digital}/shipments")
    no_units = await workshop.post(f"/v1/orders/{restocked}/shipments")
    missing = await workshop.post("/v1/orders/ord_nope/shipments")
    bad_url = await workshop.post(
        f"/v1/orders/{restocked}/shipments", {"tracking_url": "javascript:alert(1)"}
    )

    assert (no_goods.status_code, no_goods.json()["type"]) == (409, PROBLEM + "nothing-to-ship")
    assert "no physical items" in no_goods.json()["detail"]
    assert (no_units.status_code, no_units.json()["type"]) == (409, PROBLEM + "nothing-to-ship")
    assert "back on sale" in no_units.json()["detail"]
    assert missing.status_code == 404
    assert bad_url.status_code == 422
    assert [e["loc"] for e in bad_url.json()["errors"]] == ["tracking_url"]
    assert await workshop.totals() == (5, 0, 0, 5)


async def test_the_buyer_is_emailed_the_tracking(
    workshop: Workshop,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    smtp: SmtpServer,
) -> None:
    mail = settings.model_copy(
        update={"smtp_url": f"smtp://127.0.0.1:{smtp.port}", "smtp_timeout_seconds": 5.0}
    )
    order = await workshop.buy(workshop.mug, 1)
    await workshop.post(
        f"/v1/orders/{order}/shipments",
        {"carrier": "Royal Mail", "tracking_url": "https://track.example/RM1"},
    )

    await Worker(database, clock, settings=mail).run_once()

    subjects = sorted(str(received.message["Subject"]) for received in smtp.received)
    assert subjects == [
        "Your order from Kiln & Clay is on its way [KILN-CLAY-000001]",
        "Your receipt from Kiln & Clay [KILN-CLAY-000001]",
    ]
    [shipped] = [r for r in smtp.received if "on its way" in str(r.message["Subject"])]
    assert shipped.rcpt_tos == ["buyer@example.com"]
    text = shipped.message.get_body(preferencelist=("plain",))
    assert text is not None
    assert text.get_content().replace("\r\n", "\n") == (
        "Your order from Kiln & Clay is on its way\n\n"
        "Kiln & Clay has shipped your order KILN-CLAY-000001.\n\n"
        "- 1 × Winter mug\n\n"
        "Carrier: Royal Mail\n"
        "Track it: https://track.example/RM1\n\n"
        "Sent on behalf of Kiln & Clay to buyer@example.com.\n"
    )
