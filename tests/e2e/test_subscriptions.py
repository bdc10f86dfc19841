"""Subscriptions over HTTP, on SQLite and PostgreSQL: subscribe and pay the first invoice,
the lifecycle through a test clock (renewals on the local calendar, dunning to the end
with ``tok_chargeCustomerFail`` and recovery by a new payment method), every
cancellation path, pause, resume, skip, the plan-change preview and the consent record."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from stallholder.events.models import Event
from stallholder.kit.db import Database
from stallholder.payments.models import SandboxCharge
from tests.conftest import Api, bearer

pytestmark = pytest.mark.anyio

PROBLEMS = "https://stallholder.dev/problems/"


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


class Billing:
    """A creator with a monthly $3 zine plan, and helpers over the billing API."""

    def __init__(self, api: Api, key: str, price: str) -> None:
        self.api = api
        self.key = key
        self.price = price

    @classmethod
    async def start(cls, api: Api, *, unit_amount: int = 300, **recurring: Any) -> Billing:
        creator = await api.creator()
        key = creator["secret_key"]
        product = await api.product(key, kind="digital", name="Zine club")
        price = await api.price(
            key,
            product=product["id"],
            unit_amount=unit_amount,
            recurring={"interval": "month", **recurring},
        )
        return cls(api, key, price["id"])

    async def post(self, path: str, body: dict[str, Any], key: str | None = None) -> Any:
        return await self.api.http.post(path, headers=bearer(key or self.key), json=body)

    async def ok(self, path: str, body: dict[str, Any] | None = None, status: int = 200) -> Any:
        response = await self.post(path, body or {})
        assert response.status_code == status, response.text
        return response.json()

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.api.http.get(path, headers=bearer(self.key), params=params)
        assert response.status_code == 200, response.text
        return response.json()

    async def customer(
        self, *, token: str = "tok_visa", time_zone: str = "UTC", test_clock: str | None = None
    ) -> tuple[str, str]:
        body: dict[str, Any] = {"email": "reader@example.com", "time_zone": time_zone}
        if test_clock is not None:
            body["test_clock"] = test_clock
        customer = await self.ok("/v1/customers", body, status=201)
        method = await self.ok(
            f"/v1/customers/{customer['id']}/payment_methods", {"token": token}, status=201
        )
        return customer["id"], method["id"]

    async def subscribe(self, customer: str, **extra: Any) -> Any:
        return await self.ok(
            "/v1/subscriptions",
            {"customer": customer, "items": [{"price": self.price, "quantity": 1}], **extra},
            status=201,
        )

    async def clock(self, frozen_time: str, key: str | None = None) -> str:
        response = await self.post(
            "/v1/test_clocks", {"frozen_time": frozen_time, "name": "zine"}, key=key
        )
        assert response.status_code == 201, response.text
        clock_id: str = response.json()["id"]
        return clock_id

    async def advance(self, clock: str, frozen_time: str) -> Any:
        return await self.ok(f"/v1/test_clocks/{clock}/advance", {"frozen_time": frozen_time})

    async def invoices(self, subscription: str) -> list[dict[str, Any]]:
        listed = await self.get("/v1/invoices", subscription=subscription, limit=100)
        found: list[dict[str, Any]] = list(reversed(listed["data"]))
        return found


async def _count(database: Database, statement: Any) -> int:
    async with database.unit_of_work() as session:
        return int((await session.execute(statement)).scalar_one())


async def test_subscribing_charges_the_first_invoice_and_shows_the_cycles(
    api: Api, database: Database
) -> None:
    billing = await Billing.start(api)
    customer, method = await billing.customer()
    subscription = await billing.subscribe(customer, default_payment_method=method)

    assert subscription["status"] == "active"
    assert subscription["object"] == "subscription"
    assert subscription["amount"] == 300
    assert subscription["current_period_start"] == "2026-03-01T12:00:00Z"
    assert subscription["current_period_end"] == "2026-04-01T12:00:00Z"
    assert subscription["current_cycle"] == {
        "charge_date": "2026-03-01T12:00:00Z",
        "amount": 300,
        "cutoff": "2026-03-01T00:00:00Z",
        "ships_on": "2026-03-01",
    }
    assert subscription["next_cycle"] == {
        "charge_date": "2026-04-01T12:00:00Z",
        "amount": 300,
        "cutoff": "2026-04-01T00:00:00Z",
        "ships_on": "2026-04-01",
    }
    (invoice,) = await billing.invoices(subscription["id"])
    assert {
        key: invoice[key]
        for key in (
            "status",
            "billing_reason",
            "amount_due",
            "amount_paid",
            "amount_remaining",
            "attempt_count",
            "next_payment_attempt",
            "period_start",
            "period_end",
        )
    } == {
        "status": "paid",
        "billing_reason": "subscription_create",
        "amount_due": 300,
        "amount_paid": 300,
        "amount_remaining": 0,
        "attempt_count": 1,
        "next_payment_attempt": None,
        "period_start": "2026-03-01T12:00:00Z",
        "period_end": "2026-04-01T12:00:00Z",
    }
    assert invoice["charge"].startswith("pay_")
    order = await billing.get(f"/v1/orders/{invoice['order']}")
    assert (order["invoice"], order["amount_total"]) == (invoice["id"], 300)
    assert await billing.get(f"/v1/invoices/{invoice['id']}") == invoice
    assert await _count(database, select(func.count()).select_from(SandboxCharge)) == 1
    types = await _event_types(database)
    assert types == [
        "customer.subscription.created",
        "invoice.created",
        "order.paid",
        "invoice.paid",
        "customer.subscription.updated",
    ]


async def _event_types(database: Database) -> list[str]:
    async with database.unit_of_work() as session:
        rows = await session.execute(select(Event.type).order_by(Event.id))
        return [row for (row,) in rows]
