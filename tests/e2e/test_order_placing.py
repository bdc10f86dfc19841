"""A paid order as written, on both databases: on PostgreSQL its receipt number, the order
and its lines are one statement (``orders.service._placing``), on SQLite three; what is
read back afterwards, and what the ``order.paid`` event says, must be the same."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update

from stallholder.accounts.models import Creator
from stallholder.events.models import Event
from stallholder.kit.db import Database
from stallholder.orders.models import OrderLineItem
from stallholder.orders.service import _LINE_COLUMNS, _ORDER_COLUMNS, _set
from tests.conftest import Api, bearer

pytestmark = pytest.mark.anyio


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


async def _sell(api: Api, key: str, lines: list[dict[str, Any]], email: str) -> dict[str, Any]:
    created = await api.http.post(
        "/v1/checkout/sessions",
        headers=bearer(key),
        json={"line_items": lines, "customer_email": email},
    )
    assert created.status_code == 201, created.text
    paid = await api.confirm(key, created.json()["id"])
    assert paid.status_code == 200, paid.text
    orders = await api.http.get("/v1/orders", headers=bearer(key), params={"limit": 1})
    order: dict[str, Any] = orders.json()["data"][0]
    assert order["checkout_session"] == created.json()["id"]
    return order


async def test_an_order_reads_back_as_it_was_written_past_a_million_receipts(
    api: Api, database: Database
) -> None:
    creator = await api.creator(name="Kiln and Clay", slug="kiln-and-clay")
    key = creator["secret_key"]
    mug = await api.product(key, name="Mug")
    print_ = await api.product(key, kind="digital", name="Print")
    mug_price = await api.price(key, product=mug["id"], unit_amount=4800)
    print_price = await api.price(key, product=print_["id"], unit_amount=1200)
    async with database.unit_of_work() as session:
        await session.execute(
            update(Creator).where(Creator.id == creator["id"]).values(receipt_counter=999_998)
        )

    first = await _sell(
        api,
        key,
        [{"price": print_price["id"], "quantity": 3}, {"price": mug_price["id"], "quantity": 1}],
        "one@example.com",
    )
    second = await _sell(api, key, [{"price": mug_price["id"], "quantity": 2}], "two@example.com")

    # Six digits at least, and all of them past a million (never cut to six).
    assert first["receipt"]["number"] == "KILN-AND-CLAY-999999"
    assert second["receipt"]["number"] == "KILN-AND-CLAY-1000000"
    bought = [
        (line["price"], line["quantity"], line["amount_total"]) for line in first["line_items"]
    ]
    assert bought == [
        (print_price["id"], 3, 3600),
        (mug_price["id"], 1, 4800),
    ]
    assert (first["amount_subtotal"], first["amount_total"], first["amount_refunded"]) == (
        8400,
        8400,
        0,
    )
    again = await api.http.get(f"/v1/orders/{first['id']}", headers=bearer(key))
    assert {name: value for name, value in again.json().items() if name in first} == first
    async with database.unit_of_work() as session:
        lines = (
            await session.execute(
                select(OrderLineItem.order_id, OrderLineItem.product_id, OrderLineItem.quantity)
                .where(OrderLineItem.creator_id == creator["id"])
                .order_by(OrderLineItem.id)
            )
        ).all()
        paid_events = (
            (
                await session.execute(
                    select(Event.data)
                    .where(Event.creator_id == creator["id"], Event.type == "order.paid")
                    .order_by(Event.created_at, Event.id)
                )
            )
            .scalars()
            .all()
        )
    assert [tuple(line) for line in lines] == [
        (first["id"], print_["id"], 3),
        (first["id"], mug["id"], 1),
        (second["id"], mug["id"], 2),
    ]
    assert sorted(event["receipt"]["number"] for event in paid_events) == [
        "KILN-AND-CLAY-1000000",
        "KILN-AND-CLAY-999999",
    ]
    by_id = {event["id"]: event for event in paid_events}
    assert by_id[first["id"]]["line_items"] == first["line_items"]


def test_placing_an_order_refuses_a_column_left_unset() -> None:
    """No ORM default applies to the one-statement write: a column not set on the new
    object would be written as the database's default while the session believed
    otherwise, so it is refused by name."""
    line = OrderLineItem(price_id="price_1", product_id="prod_1", variant_id="var_1", sku="S")
    with pytest.raises(ValueError, match=r"OrderLineItem\.description must be set"):
        _set(line, "description")
    assert _set(line, "sku") == "S"
    assert "receipt_number" not in _ORDER_COLUMNS
    assert {"id", "creator_id", "order_id"}.isdisjoint(_LINE_COLUMNS)
