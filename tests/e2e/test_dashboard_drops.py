"""The dashboard's drop form (issue 10: drops by form, not only by API): what was typed
stays on a mistake, nothing is created then, and the page calls the same service as
``POST /v1/drops``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from stallholder.inventory.models import Drop, DropItem
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.settings import Settings
from tests.conftest import Api, bearer
from tests.e2e.portal_helpers import browser, csrf_of
from tests.e2e.test_dashboard import _sign_in_from_outbox, unlabelled_controls

pytestmark = pytest.mark.anyio
SHOP = "hi@example.com"


@pytest.fixture
def database_url(any_database_url: str) -> str:
    """On SQLite and PostgreSQL: the drop's savepoint on both."""
    return any_database_url


async def _count(database: Database, model: Any) -> int:
    async with database.read() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


async def _post_drop(phone: httpx.AsyncClient, fields: dict[str, Any]) -> httpx.Response:
    page = await phone.get("/dashboard/drops")
    assert page.status_code == 200, page.text
    form = {
        "name": "Moon mugs",
        "opens_at": "2026-03-02T18:00",
        "closes_at": "2026-03-03T18:00",
        "mode": "first_come",
        "per_customer_limit": "",
        "reservation_minutes": "10",
        **fields,
        "csrf_token": csrf_of(page.text),
    }
    return await phone.post("/dashboard/drops", data=form)


async def test_a_drop_is_created_by_form_and_mistakes_keep_what_was_typed(
    api: Api, settings: Settings, database: Database, clock: FrozenClock
) -> None:
    creator = await api.creator(email=SHOP)
    key = creator["secret_key"]
    product = await api.product(key, name="Moon mug")
    mug = await api.price(key, product=product["id"], unit_amount=2400)
    plate = await api.price(key, product=product["id"], unit_amount=1800)
    async with browser(settings, database, clock) as phone:
        await _sign_in_from_outbox(phone, database, SHOP)
        page = await phone.get("/dashboard/drops")
        assert 'id="drop-form"' in page.text
        assert 'id="no-drops"' in page.text
        assert unlabelled_controls(page.text) == []
        assert f'<option value="{mug["id"]}">Moon mug — $24.00</option>' in page.text

        mistakes: list[tuple[dict[str, Any], int, str, str]] = [
            (
                {"opens_at": "tomorrow", "price": [mug["id"]], "quantity": ["5"]},
                422,
                "opens at: &#39;tomorrow&#39; is not a date and time; use the picker or type "
                "2026-12-01T18:00 (UTC)",
                'value="tomorrow"',
            ),
            (
                {"closes_at": "2026-03-02T17:00", "price": [mug["id"]], "quantity": ["5"]},
                400,
                "closes_at (2026-03-02T17:00:00+00:00) must be after opens_at "
                "(2026-03-02T18:00:00+00:00)",
                'value="2026-03-02T17:00"',
            ),
            (
                {"price": [mug["id"], "price_nope"], "quantity": ["5", "2"]},
                400,
                "item 2: no price &#39;price_nope&#39;",
                'value="price_nope"',
            ),
            (
                {"price": [mug["id"]], "quantity": ["0"]},
                422,
                "item 1 quantity: Input should be greater than or equal to 1",
                'value="0"',
            ),
            (
                # A sign doubled is not a number: a 422 with what was typed, not a 500.
                {"price": [mug["id"]], "quantity": ["+-5"]},
                422,
                "item 1 quantity: Input should be a valid integer",
                'value="+-5"',
            ),
            (
                {"price": ["", ""], "quantity": ["", ""]},
                422,
                "items: fill in at least one row: a price and how many units",
                'value="Moon mugs"',
            ),
        ]
        for fields, status, message, kept in mistakes:
            shown = await _post_drop(phone, fields)
            assert shown.status_code == status, fields
            assert 'id="drop-errors"' in shown.text
            assert message in shown.text, shown.text
            assert kept in shown.text  # what was typed stays
        assert await _count(database, Drop) == 0

        done = await _post_drop(
            phone,
            {
                "mode": "raffle",
                "per_customer_limit": "1",
                "reservation_minutes": "15",
                "price": [mug["id"], "", plate["id"]],
                "quantity": ["5", "", "3"],
            },
        )
        assert done.status_code == 303, done.text
        location = done.headers["location"]
        assert location.startswith("/dashboard/drops?created=drop_")
        drop_id = location.removeprefix("/dashboard/drops?created=")
        shown = await phone.get(location)
        assert 'id="drop-created"' in shown.text
        assert "<strong>Moon mugs</strong>" in shown.text
        assert "raffle · 2026-03-02 18:00 – 2026-03-03 18:00 UTC" in shown.text
        assert '<td class="amount">8 of 8</td>' in shown.text

        # A price already in a drop: refused (the flush fails in a savepoint), nothing kept.
        again = await _post_drop(phone, {"price": [mug["id"]], "quantity": ["1"]})
        assert again.status_code == 409
        assert (
            "a price of this drop is sold in another drop already; each price is in one drop"
            in again.text
        )
    assert await _count(database, Drop) == 1
    drop = (await api.http.get(f"/v1/drops/{drop_id}", headers=bearer(key))).json()
    assert {
        name: drop[name]
        for name in (
            "name",
            "mode",
            "status",
            "opens_at",
            "closes_at",
            "per_customer_limit",
            "reservation_minutes",
        )
    } == {
        "name": "Moon mugs",
        "mode": "raffle",
        "status": "scheduled",
        "opens_at": "2026-03-02T18:00:00Z",
        "closes_at": "2026-03-03T18:00:00Z",
        "per_customer_limit": 1,
        "reservation_minutes": 15,
    }
    assert [(item["price"], item["quantity"]) for item in drop["items"]] == [
        (mug["id"], 5),
        (plate["id"], 3),
    ]


async def test_a_drop_is_changed_by_form_and_a_refusal_changes_nothing(
    api: Api, settings: Settings, database: Database, clock: FrozenClock
) -> None:
    creator = await api.creator(email=SHOP)
    key = creator["secret_key"]
    product = await api.product(key, name="Moon mug")
    mug = await api.price(key, product=product["id"], unit_amount=2400)
    opens, closes = clock.now() + timedelta(hours=1), clock.now() + timedelta(hours=5)
    made = await api.http.post(
        "/v1/drops",
        headers=bearer(key),
        json={
            "name": "Moon mugs",
            "opens_at": opens.isoformat(),
            "closes_at": closes.isoformat(),
            "items": [{"price": mug["id"], "quantity": 3}],
        },
    )
    assert made.status_code == 201, made.text
    drop_id = made.json()["id"]
    edit = f"/dashboard/drops/{drop_id}/edit"

    async def stored() -> tuple[str, int | None, int]:
        async with database.read() as session:
            drop = await session.get(Drop, drop_id)
            item = (await session.execute(select(DropItem))).scalar_one()
            assert drop is not None
            return drop.name, drop.per_customer_limit, item.quantity

    async with browser(settings, database, clock) as phone:
        await _sign_in_from_outbox(phone, database, SHOP)
        listed = await phone.get("/dashboard/drops")
        assert f'href="{edit}"' in listed.text
        page = await phone.get(edit)
        assert page.status_code == 200
        assert unlabelled_controls(page.text) == []
        assert 'id="drop-opens-at"' in page.text  # not open yet: its opening can move
        token = csrf_of(page.text)
        fields = {
            "name": "Moon mugs, glazed",
            "opens_at": opens.strftime("%Y-%m-%dT%H:%M"),
            "closes_at": (closes + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
            "per_customer_limit": "1",
            "reservation_minutes": "10",
            "quantity": "5",
            "csrf_token": token,
        }
        saved = await phone.post(edit, data=fields)
        assert saved.status_code == 303, saved.text
        assert saved.headers["location"] == f"/dashboard/drops?updated={drop_id}"
        assert await stored() == ("Moon mugs, glazed", 1, 5)
        drop = (await api.http.get(f"/v1/drops/{drop_id}", headers=bearer(key))).json()
        assert drop["closes_at"] == (closes + timedelta(hours=1)).isoformat().replace("+00:00", "Z")

        # Open, with a unit held: the opening is shown, not offered; too few is refused.
        clock.set(opens)
        held = await api.http.post(
            "/v1/checkout/sessions",
            headers=bearer(key),
            json={
                "line_items": [{"price": mug["id"], "quantity": 1}],
                "customer_email": "fan@example.com",
            },
        )
        assert held.status_code == 201, held.text
        page = await phone.get(edit)
        assert 'id="drop-opens-at"' not in page.text
        assert 'id="drop-opened"' in page.text
        assert "(1 held, 0 sold)" in page.text
        refused = await phone.post(
            edit, data={**fields, "name": "Renamed", "per_customer_limit": "", "quantity": "0"}
        )
        assert refused.status_code == 422
        assert "item 1 quantity: Input should be greater than or equal to 1" in refused.text
        below = await phone.post(
            edit,
            data={
                **fields,
                "opens_at": opens.strftime("%Y-%m-%dT%H:%M"),
                "name": "Renamed",
                "quantity": "1",
                "closes_at": (closes + timedelta(hours=9)).strftime("%Y-%m-%dT%H:%M"),
            },
        )
        assert below.status_code == 303, below.text  # 1 held: exactly what is taken is fine
        assert await stored() == ("Renamed", 1, 1)
        unlimited = await phone.post(
            edit, data={**fields, "name": "Again", "quantity": "1", "per_customer_limit": ""}
        )
        assert unlimited.status_code == 409
        assert "with a per-customer limit; it can change to another number" in unlimited.text
        assert await stored() == ("Renamed", 1, 1)
        zero_left = await phone.post(
            edit, data={**fields, "name": "Again", "quantity": "1", "per_customer_limit": "abc"}
        )
        assert zero_left.status_code == 422
        assert "limit per buyer: Input should be a valid integer" in zero_left.text
        assert 'value="abc"' in zero_left.text
        assert await stored() == ("Renamed", 1, 1)  # nothing changed
        past = await phone.post(
            edit,
            data={
                **fields,
                "name": "Again",
                "quantity": "1",
                "closes_at": (opens - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
            },
        )
        assert past.status_code == 400
        assert "is not in the future; give a later time" in past.text
        assert await stored() == ("Renamed", 1, 1)
