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
from stallholder.notifications.models import Email
from stallholder.payments.models import SandboxCharge
from tests.conftest import ADMIN_KEY, Api, bearer

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


async def test_a_test_clock_renews_on_the_buyers_calendar_from_the_31st(
    api: Api, database: Database
) -> None:
    billing = await Billing.start(api)
    clock = await billing.clock("2026-01-31T09:00:00Z", key=ADMIN_KEY)
    customer, method = await billing.customer(time_zone="Pacific/Auckland", test_clock=clock)
    subscription = await billing.subscribe(customer, default_payment_method=method)
    assert subscription["status"] == "active"
    assert subscription["test_clock"] == clock
    assert subscription["current_period_start"] == "2026-01-31T09:00:00Z"  # 22:00 NZDT

    advanced = await billing.advance(clock, "2026-05-15T00:00:00Z")
    assert (advanced["status"], advanced["frozen_time"]) == ("ready", "2026-05-15T00:00:00Z")

    invoices = await billing.invoices(subscription["id"])
    assert [(i["period_start"], i["status"], i["amount_paid"]) for i in invoices] == [
        ("2026-01-31T09:00:00Z", "paid", 300),
        ("2026-02-28T09:00:00Z", "paid", 300),  # 28 Feb 22:00 NZDT
        ("2026-03-31T09:00:00Z", "paid", 300),  # back on the 31st
        ("2026-04-30T10:00:00Z", "paid", 300),  # 30 Apr 22:00 NZST (+12 from 5 April)
    ]
    after = await billing.get(f"/v1/subscriptions/{subscription['id']}")
    assert (after["current_period_start"], after["current_period_end"]) == (
        "2026-04-30T10:00:00Z",
        "2026-05-31T10:00:00Z",
    )
    assert await _count(database, select(func.count()).select_from(SandboxCharge)) == 4
    # Advancing again to the same time runs nothing twice.
    await billing.advance(clock, "2026-05-15T00:00:00Z")
    assert len(await billing.invoices(subscription["id"])) == 4


async def test_dunning_to_the_end_cancels_and_records_involuntary_churn(
    api: Api, database: Database
) -> None:
    billing = await Billing.start(api)
    clock = await billing.clock("2026-03-01T12:00:00Z")
    customer, method = await billing.customer(test_clock=clock)
    subscription = await billing.subscribe(customer, default_payment_method=method)
    await billing.advance(clock, "2026-04-01T12:00:00Z")  # renewal 1 paid
    # The card starts failing: the customer's only card is replaced by a failing one.
    failing = await billing.ok(
        f"/v1/customers/{customer}/payment_methods", {"token": "tok_chargeCustomerFail"}, 201
    )
    await billing.ok(
        f"/v1/subscriptions/{subscription['id']}", {"default_payment_method": failing["id"]}
    )
    await billing.advance(clock, "2026-05-01T12:00:00Z")  # renewal 2 fails
    state = await billing.get(f"/v1/subscriptions/{subscription['id']}")
    assert state["status"] == "past_due"
    invoice = (await billing.invoices(subscription["id"]))[-1]
    assert (invoice["status"], invoice["attempt_count"], invoice["next_payment_attempt"]) == (
        "open",
        1,
        "2026-05-02T12:00:00Z",
    )
    await billing.advance(clock, "2026-05-06T12:00:00Z")  # retries at +1, +3, +5 fail
    invoice = await billing.get(f"/v1/invoices/{invoice['id']}")
    assert (invoice["attempt_count"], invoice["next_payment_attempt"]) == (
        4,
        "2026-05-08T12:00:00Z",
    )
    await billing.advance(clock, "2026-06-30T00:00:00Z")  # the last retry at +7 fails
    invoice = await billing.get(f"/v1/invoices/{invoice['id']}")
    assert (invoice["status"], invoice["attempt_count"], invoice["next_payment_attempt"]) == (
        "uncollectible",
        5,
        None,
    )
    ended = await billing.get(f"/v1/subscriptions/{subscription['id']}")
    assert (ended["status"], ended["ended_at"]) == ("canceled", "2026-05-08T12:00:00Z")
    assert ended["cancellation"]["churn"] == "involuntary"
    assert ended["next_cycle"] is None
    # Five failed attempts, each charged at the gateway once, and one email for each.
    assert len(await billing.invoices(subscription["id"])) == 3
    assert (
        await _count(
            database,
            select(func.count()).select_from(SandboxCharge).where(SandboxCharge.status == "failed"),
        )
        == 5
    )
    assert (
        await _count(
            database,
            select(func.count()).select_from(Email).where(Email.kind == "invoice_payment_failed"),
        )
        == 5
    )
    types = await _event_types(database)
    assert types.count("invoice.payment_failed") == 5
    assert types[-1] == "customer.subscription.deleted"


async def test_a_new_payment_method_retries_at_once_and_recovers(
    api: Api, database: Database
) -> None:
    billing = await Billing.start(api)
    clock = await billing.clock("2026-03-01T12:00:00Z")
    customer, failing = await billing.customer(token="tok_chargeCustomerFail", test_clock=clock)
    subscription = await billing.subscribe(customer, default_payment_method=failing)
    assert subscription["status"] == "incomplete"
    (invoice,) = await billing.invoices(subscription["id"])
    assert (invoice["status"], invoice["attempt_count"], invoice["next_payment_attempt"]) == (
        "open",
        1,
        "2026-03-02T12:00:00Z",
    )
    await billing.advance(clock, "2026-03-02T18:00:00Z")  # the retry at +1 fails too
    working = await billing.ok(
        f"/v1/customers/{customer}/payment_methods", {"token": "tok_visa"}, 201
    )
    updated = await billing.ok(
        f"/v1/subscriptions/{subscription['id']}", {"default_payment_method": working["id"]}
    )
    assert updated["default_payment_method"] == working["id"]
    await billing.advance(clock, "2026-03-02T18:00:00Z")  # due at once: runs now
    invoice = await billing.get(f"/v1/invoices/{invoice['id']}")
    assert (invoice["status"], invoice["attempt_count"], invoice["amount_paid"]) == (
        "paid",
        3,
        300,
    )
    recovered = await billing.get(f"/v1/subscriptions/{subscription['id']}")
    assert recovered["status"] == "active"
    # The retry scheduled for +3 days finds the invoice paid and charges nothing.
    await billing.advance(clock, "2026-03-10T00:00:00Z")
    assert await _count(database, select(func.count()).select_from(SandboxCharge)) == 3
