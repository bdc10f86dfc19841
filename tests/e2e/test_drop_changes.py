"""Changing a drop over HTTP (``POST /v1/drops/{id}``), on SQLite and PostgreSQL: what may
change when, quantities never below what is held and sold, the announcements and a
raffle's draw moving with the window, ``drop.updated``, and ``GET /v1/drops``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from stallholder.events.models import Event
from stallholder.jobs.worker import Worker
from stallholder.kit import work
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from tests.conftest import Api
from tests.e2e.test_drops import CLOSES, OPENS, PROBLEM, DropShop, winter_mug_shop

pytestmark = pytest.mark.anyio


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


@pytest.fixture
async def shop(api: Api) -> DropShop:
    return await winter_mug_shop(api)


async def _due(database: Database, key: str) -> Any:
    async with database.read() as session:
        return (
            await session.execute(
                select(work.WorkItem.due_at, work.WorkItem.state).where(
                    work.WorkItem.dedupe_key == key
                )
            )
        ).one()


async def _events(database: Database, type: str) -> list[dict[str, Any]]:
    async with database.read() as session:
        rows = await session.execute(
            select(Event.data).where(Event.type == type).order_by(Event.created_at, Event.id)
        )
        return [dict(data) for data in rows.scalars()]


async def test_a_scheduled_drop_changes_its_name_window_limits_and_quantities(
    shop: DropShop, database: Database
) -> None:
    drop = (await shop.drop()).json()
    later_open, later_close = OPENS + timedelta(hours=1), CLOSES + timedelta(days=1)

    changed = await shop.post(
        f"/v1/drops/{drop['id']}",
        {
            "name": "Winter mugs, second firing",
            "opens_at": later_open.isoformat(),
            "closes_at": later_close.isoformat(),
            "per_customer_limit": None,
            "reservation_minutes": 15,
            "items": [{"price": shop.price, "quantity": 5}],
        },
    )

    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["name"], body["status"], body["per_customer_limit"]) == (
        "Winter mugs, second firing",
        "scheduled",
        None,
    )
    assert (body["opens_at"], body["closes_at"]) == (
        later_open.isoformat().replace("+00:00", "Z"),
        later_close.isoformat().replace("+00:00", "Z"),
    )
    assert (body["reservation_minutes"], body["remaining"]) == (15, 5)
    assert body["items"] == [
        {"price": shop.price, "quantity": 5, "held": 0, "sold": 0, "remaining": 5}
    ]
    # The announcements moved with the window.
    assert await _due(database, f"inventory.drop_opened:{drop['id']}") == (later_open, "pending")
    assert await _due(database, f"inventory.drop_closed:{drop['id']}") == (
        later_close,
        "pending",
    )
    [updated] = await _events(database, "drop.updated")
    assert updated | {"id": ""} == {
        "object": "drop",
        "id": "",
        "name": "Winter mugs, second firing",
        "mode": "first_come",
        "status": "scheduled",
        "opens_at": later_open.isoformat(),
        "closes_at": later_close.isoformat(),
        "per_customer_limit": None,
        "remaining": 5,
        "items": [{"price": shop.price, "quantity": 5}],
    }
    # Only what is sent changes; the same values again change nothing (no event).
    again = await shop.post(f"/v1/drops/{drop['id']}", {"name": "Winter mugs, second firing"})
    assert again.status_code == 200
    assert again.json()["reservation_minutes"] == 15
    assert len(await _events(database, "drop.updated")) == 1


async def test_an_open_drop_keeps_its_opening_and_never_goes_below_what_is_taken(
    shop: DropShop, clock: FrozenClock, api: Api, database: Database
) -> None:
    drop = (await shop.drop(per_customer_limit=None)).json()
    clock.set(OPENS)
    held = [await shop.session(f"fan{n}@example.com") for n in range(3)]
    assert [response.status_code for response in held] == [201, 201, 201]
    assert (await api.confirm(shop.sk, held[0].json()["id"])).status_code == 200
    path = f"/v1/drops/{drop['id']}"

    moved = await shop.post(path, {"opens_at": (OPENS + timedelta(hours=1)).isoformat()})
    assert (moved.status_code, moved.json()["type"]) == (409, PROBLEM + "drop-not-editable")
    assert moved.json()["detail"].startswith(f"drop {drop['id']} opened at ")
    below = await shop.post(path, {"items": [{"price": shop.price, "quantity": 2}]})
    assert (below.status_code, below.json()["type"]) == (
        409,
        PROBLEM + "drop-quantity-below-taken",
    )
    assert below.json()["detail"] == (
        f"price {shop.price}: 2 unit(s) are held by open checkouts and 1 sold; its quantity "
        "cannot go below 3"
    )
    assert (below.json()["held"], below.json()["sold"]) == (2, 1)
    past = await shop.post(path, {"closes_at": (OPENS - timedelta(minutes=1)).isoformat()})
    assert (past.status_code, past.json()["param"]) == (400, "closes_at")
    other = await shop.post(path, {"items": [{"price": "price_nope", "quantity": 9}]})
    assert (other.status_code, other.json()["type"]) == (400, PROBLEM + "invalid-drop-item")
    null = await shop.post(path, {"name": None})
    assert null.status_code == 422
    assert (await shop.get(drop["id"]))["items"][0]["quantity"] == 3  # nothing changed

    # Sold out, then two more units: the drop is open again; the closing moves later.
    assert (await shop.get(drop["id"]))["status"] == "sold_out"
    more = await shop.post(
        path,
        {
            "items": [{"price": shop.price, "quantity": 5}],
            "closes_at": (CLOSES + timedelta(hours=2)).isoformat(),
        },
    )
    assert more.status_code == 200, more.text
    assert (more.json()["status"], more.json()["remaining"]) == ("open", 2)
    assert await _due(database, f"inventory.drop_closed:{drop['id']}") == (
        CLOSES + timedelta(hours=2),
        "pending",
    )
    assert (await shop.session("late@example.com")).status_code == 201
    # Exactly what is taken is allowed: the drop sells out.
    exact = await shop.post(path, {"items": [{"price": shop.price, "quantity": 4}]})
    assert (exact.status_code, exact.json()["status"]) == (200, "sold_out")

    # Closed: its window is over and cannot move.
    clock.set(CLOSES + timedelta(hours=2))
    await Worker(database, clock).run_once()
    closed = await shop.post(path, {"closes_at": (CLOSES + timedelta(days=1)).isoformat()})
    assert (closed.status_code, closed.json()["type"]) == (409, PROBLEM + "drop-not-editable")
    renamed = await shop.post(path, {"name": "Sold: winter mugs"})
    assert (renamed.status_code, renamed.json()["status"]) == (200, "closed")


async def test_an_open_drops_limit_is_neither_added_nor_removed_so_expiries_count_right(
    shop: DropShop, clock: FrozenClock
) -> None:
    # Buyers are counted only while a drop has a limit; an expiry takes its units off the
    # count. A limit added to an open drop would make the expiry of a hold taken before it
    # take off units never counted (the count below zero: the expiry failed).
    unlimited = (await shop.drop(per_customer_limit=None)).json()
    product = await shop.api.product(shop.sk, name="Spring mug")
    price = await shop.api.price(shop.sk, product=product["id"], unit_amount=4200)
    limited = (await shop.drop(items=[{"price": price["id"], "quantity": 3}])).json()
    clock.set(OPENS)
    first = await shop.session("fan@example.com", quantity=2)
    assert first.status_code == 201, first.text

    added = await shop.post(f"/v1/drops/{unlimited['id']}", {"per_customer_limit": 3})
    assert (added.status_code, added.json()["type"]) == (409, PROBLEM + "drop-not-editable")
    assert added.json()["detail"] == (
        f"drop {unlimited['id']} opened at {OPENS.isoformat()} with no per-customer limit; "
        "one cannot be added once it is open"
    )
    removed = await shop.post(f"/v1/drops/{limited['id']}", {"per_customer_limit": None})
    assert (removed.status_code, removed.json()["type"]) == (409, PROBLEM + "drop-not-editable")
    assert removed.json()["detail"] == (
        f"drop {limited['id']} opened at {OPENS.isoformat()} with a per-customer limit; it "
        "can change to another number but cannot be removed"
    )
    raised = await shop.post(f"/v1/drops/{limited['id']}", {"per_customer_limit": 5})
    assert (raised.status_code, raised.json()["per_customer_limit"]) == (200, 5)

    second = await shop.session("fan@example.com", quantity=1)
    assert second.status_code == 201, second.text
    expired = await shop.post(f"/v1/checkout/sessions/{first.json()['id']}/expire", {})
    assert expired.status_code == 200, expired.text
    assert (await shop.get(unlimited["id"]))["remaining"] == 2


async def test_a_raffles_draw_moves_with_its_closing_and_its_units_are_fixed_once_drawn(
    shop: DropShop, clock: FrozenClock, database: Database
) -> None:
    drop = (await shop.drop(mode="raffle", per_customer_limit=None)).json()
    path = f"/v1/drops/{drop['id']}"
    later = CLOSES + timedelta(hours=5)
    moved = await shop.post(path, {"closes_at": later.isoformat(), "claim_minutes": 30})
    assert moved.status_code == 200, moved.text
    assert await _due(database, f"draw:{drop['id']}") == (later, "pending")

    clock.set(later)
    await Worker(database, clock).run_once()
    assert (await shop.get(drop["id"]))["drawn_at"] is not None
    refused = await shop.post(path, {"items": [{"price": shop.price, "quantity": 9}]})
    assert (refused.status_code, refused.json()["type"]) == (409, PROBLEM + "drop-not-editable")
    assert "was drawn at" in refused.json()["detail"]


async def test_drops_are_listed_newest_first_and_paged(shop: DropShop, api: Api) -> None:
    made = []
    for n in range(3):
        product = await api.product(shop.sk, name=f"Mug {n}")
        price = await api.price(shop.sk, product=product["id"], unit_amount=1000 + n)
        created = await shop.drop(name=f"Drop {n}", items=[{"price": price["id"], "quantity": 2}])
        assert created.status_code == 201, created.text
        made.append(created.json()["id"])
    first = await api.http.get("/v1/drops?limit=2", headers={"Authorization": f"Bearer {shop.sk}"})
    assert first.status_code == 200
    assert [row["id"] for row in first.json()["data"]] == [made[2], made[1]]
    assert first.json()["has_more"] is True
    assert first.json()["data"][0]["items"][0]["quantity"] == 2
    rest = await api.http.get(
        f"/v1/drops?limit=2&starting_after={made[1]}",
        headers={"Authorization": f"Bearer {shop.sk}"},
    )
    assert ([row["id"] for row in rest.json()["data"]], rest.json()["has_more"]) == (
        [made[0]],
        False,
    )
    publishable = await api.http.get("/v1/drops", headers={"Authorization": f"Bearer {shop.pk}"})
    assert publishable.status_code == 403
