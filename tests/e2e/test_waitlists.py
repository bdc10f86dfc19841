"""Waitlists of sold-out drops over HTTP, on SQLite and PostgreSQL: units that come back
(an expired hold, a refund with restock, an adjustment upward) are offered in signup
order, each held by a checkout session whose link is emailed through the real SMTP path;
an offer left unpaid passes to the next buyer; released units racing new buyers never
oversell."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from stallholder.inventory.models import DropClaim, DropItem, StockLevel
from stallholder.jobs.worker import Worker
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.settings import Settings
from tests.conftest import Api, bearer
from tests.e2e.test_drops import OPENS, PROBLEM, DropShop, winter_mug_shop
from tests.smtp_server import Inbox, SmtpServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(Inbox())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mail_settings(settings: Settings, smtp: SmtpServer) -> Settings:
    return settings.model_copy(
        update={
            "smtp_url": f"smtp://127.0.0.1:{smtp.port}",
            "mail_from": "Kiln & Clay <shop@shop.example>",
            "smtp_timeout_seconds": 5.0,
        }
    )


@pytest.fixture
async def shop(api: Api) -> DropShop:
    return await winter_mug_shop(api)


async def drain(database: Database, clock: FrozenClock, settings: Settings) -> None:
    """Run the worker until nothing is due (expiries, offers, the outbox, emails)."""
    worker = Worker(database, clock, settings=settings)
    for _ in range(12):
        if await worker.run_once() == 0:
            return
    raise AssertionError("the worker still had work after 12 passes")


async def join(shop: DropShop, drop_id: str, email: str, **extra: Any) -> Any:
    return await shop.api.http.post(
        f"/v1/drops/{drop_id}/waitlist", headers=bearer(shop.pk), json={"email": email, **extra}
    )


async def waitlist(shop: DropShop, drop_id: str) -> dict[str, dict[str, Any]]:
    """The drop's waitlist by email (paging through it two at a time)."""
    entries: list[dict[str, Any]] = []
    cursor: dict[str, Any] = {"limit": 2}
    while True:
        response = await shop.api.http.get(
            f"/v1/drops/{drop_id}/waitlist", headers=bearer(shop.sk), params=cursor
        )
        assert response.status_code == 200, response.text
        page = response.json()
        entries += page["data"]
        if not page["has_more"]:
            return {entry["email"]: entry for entry in entries}
        cursor = {"limit": 2, "starting_after": page["data"][-1]["id"]}


async def drop_counts(database: Database, drop_id: str) -> tuple[int, int, int]:
    """(quantity, held, sold) of the drop's one item, read from the table."""
    async with database.read() as session:
        item = (
            await session.execute(
                select(DropItem.quantity, DropItem.held, DropItem.sold).where(
                    DropItem.drop_id == drop_id
                )
            )
        ).one()
    return (item.quantity, item.held, item.sold)


async def test_returned_units_are_offered_in_signup_order_held_emailed_and_passed_on(
    shop: DropShop,
    clock: FrozenClock,
    api: Api,
    database: Database,
    mail_settings: Settings,
    smtp: SmtpServer,
) -> None:
    created = await shop.drop(
        reservation_minutes=10,
        waitlist_hold_minutes=15,
        items=[{"price": shop.price, "quantity": 2}],
    )
    assert created.status_code == 201, created.text
    drop = created.json()
    assert drop["waitlist_hold_minutes"] == 15
    clock.set(OPENS)
    bought = await shop.session("a@example.com")
    order = (await api.confirm(shop.sk, bought.json()["id"])).json()["order"]
    too_soon = await join(shop, drop["id"], "early@example.com")
    assert (too_soon.status_code, too_soon.json()["type"]) == (409, PROBLEM + "drop-not-sold-out")
    assert too_soon.json()["remaining"] == 1
    abandoned = await shop.session("b@example.com")
    assert abandoned.status_code == 201

    # Sold out: three buyers wait, in this order; a second signup is the same entry.
    first = await join(shop, drop["id"], "W1@Example.com")
    second = await join(shop, drop["id"], "w2@example.com")
    third = await join(shop, drop["id"], "w3@example.com")
    assert [r.status_code for r in (first, second, third)] == [201, 201, 201]
    again = await join(shop, drop["id"], "w2@EXAMPLE.com")
    assert again.json()["id"] == second.json()["id"]
    entries = await waitlist(shop, drop["id"])
    assert {email: e["status"] for email, e in entries.items()} == {
        "W1@example.com": "waiting",
        "w2@example.com": "waiting",
        "w3@example.com": "waiting",
    }

    # The abandoned hold expires: its unit is held for the first in line for 15 minutes.
    clock.advance(timedelta(minutes=10))
    await drain(database, clock, mail_settings)
    entries = await waitlist(shop, drop["id"])
    offer = entries["W1@example.com"]
    assert offer["status"] == "offered"
    assert offer["offer_expires_at"] == (OPENS + timedelta(minutes=25)).isoformat().replace(
        "+00:00", "Z"
    )
    assert [entries[e]["status"] for e in ("w2@example.com", "w3@example.com")] == [
        "waiting",
        "waiting",
    ]
    assert await drop_counts(database, drop["id"]) == (2, 1, 1)
    # Nobody else gets the unit held for the offer.
    outsider = await shop.session("d@example.com")
    assert (outsider.status_code, outsider.json()["type"]) == (409, PROBLEM + "out-of-stock")
    held = await api.http.get(
        f"/v1/checkout/sessions/{offer['checkout_session']}", headers=bearer(shop.sk)
    )
    assert (held.json()["status"], held.json()["customer_email"]) == ("open", "W1@example.com")
    assert held.json()["amount_total"] == 4800

    # The first does not buy in 15 minutes: the offer passes to the second, who buys.
    clock.advance(timedelta(minutes=15))
    await drain(database, clock, mail_settings)
    entries = await waitlist(shop, drop["id"])
    assert (entries["W1@example.com"]["status"], entries["w2@example.com"]["status"]) == (
        "passed",
        "offered",
    )
    paid = await api.confirm(shop.sk, entries["w2@example.com"]["checkout_session"])
    assert paid.status_code == 200, paid.text
    entries = await waitlist(shop, drop["id"])
    assert entries["w2@example.com"]["status"] == "claimed"
    assert await drop_counts(database, drop["id"]) == (2, 0, 2)

    # A refund with restock brings the first buyer's unit back for the third in line.
    refund = await shop.post("/v1/refunds", {"order": order, "restock": True})
    assert refund.status_code == 201, refund.text
    await drain(database, clock, mail_settings)
    entries = await waitlist(shop, drop["id"])
    assert entries["w3@example.com"]["status"] == "offered"
    assert await drop_counts(database, drop["id"]) == (2, 1, 1)

    # Each offer was emailed once, with the link to the session holding the unit.
    subject = "One is back: Kiln & Clay's Winter mugs is held for you"
    offers = [r for r in smtp.received if str(r.message["Subject"]).startswith("One is back")]
    sent = [(r.rcpt_tos, str(r.message["Subject"])) for r in offers]
    assert sent == [
        (["W1@example.com"], subject),
        (["w2@example.com"], subject),
        (["w3@example.com"], subject),
    ]
    links = [
        f"http://testserver/pay/{entries[email]['checkout_session']}"
        for email in ("W1@example.com", "w2@example.com", "w3@example.com")
    ]
    for received, link in zip(offers, links, strict=True):
        text = received.message.get_body(preferencelist=("plain",))
        assert text is not None
        assert f"Check out now: {link}" in text.get_content()


async def test_an_adjustment_upward_of_a_sold_out_tracked_sku_is_offered(
    api: Api, clock: FrozenClock, database: Database, settings: Settings
) -> None:
    creator = await api.creator(name="Kiln & Clay")
    product = await api.product(
        creator["secret_key"],
        name="Winter mug",
        variants=[{"sku": "MUG-W", "name": "Winter glaze"}],
    )
    price = await api.price(creator["secret_key"], product=product["id"], unit_amount=4800)
    shop = DropShop(api, creator, price["id"])
    location = await shop.post("/v1/locations", {"name": "Studio"})
    variant = "MUG-W"
    stocked = await shop.post(
        "/v1/inventory/adjustments",
        {"sku": variant, "location": location.json()["id"], "delta": 1, "reason": "kiln"},
    )
    assert stocked.status_code == 200, stocked.text
    drop = (await shop.drop(items=[{"price": shop.price, "quantity": 5}])).json()
    clock.set(OPENS)
    assert (await shop.session("a@example.com")).status_code == 201
    # The drop has 4 left, but its tracked SKU has none: buyers may wait.
    waiting = await join(shop, drop["id"], "w1@example.com")
    assert waiting.status_code == 201, waiting.text
    more = await shop.post(
        "/v1/inventory/adjustments",
        {"sku": variant, "location": location.json()["id"], "delta": 1, "reason": "found one"},
    )
    assert more.status_code == 200
    await drain(database, clock, settings)
    entries = await waitlist(shop, drop["id"])
    assert entries["w1@example.com"]["status"] == "offered"
    async with database.read() as session:
        reserved = (await session.execute(select(StockLevel.reserved))).scalar_one()
    assert reserved == 2
    assert await drop_counts(database, drop["id"]) == (5, 2, 0)


async def test_waitlist_errors_name_what_to_fix(shop: DropShop, clock: FrozenClock) -> None:
    raffle = (await shop.drop(mode="raffle", per_customer_limit=None)).json()
    refused = await join(shop, raffle["id"], "w@example.com")
    assert (refused.status_code, refused.json()["type"]) == (
        409,
        PROBLEM + "waitlist-not-available",
    )
    product = await shop.api.product(shop.sk, name="Spring mug")
    other = await shop.api.price(shop.sk, product=product["id"], unit_amount=4800)
    drop = (await shop.drop(items=[{"price": other["id"], "quantity": 1}], name="B")).json()
    early = await join(shop, drop["id"], "w@example.com")
    assert (early.status_code, early.json()["type"]) == (409, PROBLEM + "waitlist-closed")
    clock.set(OPENS)
    wrong = await join(shop, drop["id"], "w@example.com", price="price_nope")
    assert (wrong.status_code, wrong.json()["type"]) == (400, PROBLEM + "price-not-in-drop")
    missing = await join(shop, "drop_nope", "w@example.com")
    assert (missing.status_code, missing.json()["type"]) == (404, PROBLEM + "drop-not-found")
    listed = await shop.api.http.get(f"/v1/drops/{drop['id']}/waitlist", headers=bearer(shop.pk))
    assert listed.status_code == 403


async def test_released_units_racing_new_buyers_never_oversell(
    shop: DropShop, clock: FrozenClock, database: Database, settings: Settings
) -> None:
    units = 4
    drop = (
        await shop.drop(per_customer_limit=None, items=[{"price": shop.price, "quantity": units}])
    ).json()
    clock.set(OPENS)
    holds = [await shop.session(f"h{n}@example.com") for n in range(units)]
    assert [h.status_code for h in holds] == [201] * units
    for n in range(6):
        assert (await join(shop, drop["id"], f"w{n}@example.com")).status_code == 201

    async def cancel(session_id: str) -> int:
        response = await shop.post(f"/v1/checkout/sessions/{session_id}/expire", {})
        return response.status_code

    async def offer() -> int:
        await drain(database, clock, settings)
        return 0

    buyers = [shop.session(f"new{n}@example.com") for n in range(12)]
    cancels = [cancel(h.json()["id"]) for h in holds]
    cancelled, responses, _ = await asyncio.gather(
        asyncio.gather(*cancels), asyncio.gather(*buyers), offer()
    )
    assert cancelled == [200] * units
    await drain(database, clock, settings)
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {201, 409}
    bought_new = statuses.count(201)
    entries = await waitlist(shop, drop["id"])
    offered = [e for e in entries.values() if e["status"] == "offered"]
    # Every unit is held exactly once: by a new buyer's session or by an offer.
    assert bought_new + len(offered) == units
    assert await drop_counts(database, drop["id"]) == (units, units, 0)
    async with database.read() as session:
        claims = (
            await session.execute(
                select(func.coalesce(func.sum(DropClaim.quantity), 0)).where(
                    DropClaim.status == "held"
                )
            )
        ).scalar_one()
    assert claims == units
    # The offers went to the first in line.
    waited = [f"w{n}@example.com" for n in range(6)]
    assert [e["email"] for e in sorted(offered, key=lambda e: e["id"])] == waited[: len(offered)]
