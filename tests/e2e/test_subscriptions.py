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
        self,
        *,
        token: str = "tok_visa",
        time_zone: str = "UTC",
        test_clock: str | None = None,
        country: str | None = None,
    ) -> tuple[str, str]:
        body: dict[str, Any] = {"email": "reader@example.com", "time_zone": time_zone}
        if country is not None:
            body["country"] = country
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


async def test_cancel_at_period_end_undo_and_cancel_again(api: Api, database: Database) -> None:
    billing = await Billing.start(api)
    clock = await billing.clock("2026-03-01T12:00:00Z")
    customer, method = await billing.customer(test_clock=clock)
    subscription = await billing.subscribe(customer, default_payment_method=method)
    path = f"/v1/subscriptions/{subscription['id']}"

    canceling = await billing.ok(f"{path}/cancel", {"reason": "too many zines"})
    assert (canceling["status"], canceling["cancel_at_period_end"], canceling["cancel_at"]) == (
        "active",
        True,
        "2026-04-01T12:00:00Z",
    )
    assert canceling["cancellation"] == {
        "requested_at": "2026-03-01T12:00:00Z",
        "effective_at": "2026-04-01T12:00:00Z",
        "reason": "too many zines",
        "churn": None,
        "refunded_amount": 0,
    }
    assert canceling["next_cycle"] is None
    kept = await billing.ok(f"{path}/undo_cancel")
    assert (kept["cancel_at"], kept["cancellation"], kept["next_cycle"]["amount"]) == (
        None,
        None,
        300,
    )
    again = await billing.post(f"{path}/undo_cancel", {})
    assert again.status_code == 409
    assert again.json()["type"] == PROBLEMS + "subscription-not-canceling"

    await billing.ok(f"{path}/cancel", {})
    await billing.advance(clock, "2026-04-15T00:00:00Z")
    ended = await billing.get(path)
    assert (ended["status"], ended["ended_at"], ended["cancellation"]["churn"]) == (
        "canceled",
        "2026-04-01T12:00:00Z",
        "voluntary",
    )
    assert len(await billing.invoices(subscription["id"])) == 1  # no renewal was billed
    refused = await billing.post(f"{path}/cancel", {})
    assert refused.status_code == 409
    assert refused.json()["type"] == PROBLEMS + "subscription-canceled"
    assert (
        await _count(
            database,
            select(func.count()).select_from(Email).where(Email.kind == "subscription_canceled"),
        )
        == 2
    )


async def test_an_immediate_cancellation_in_the_cooling_off_window_refunds_pro_rata(
    api: Api, database: Database
) -> None:
    """A buyer in the EU (or UK) has the 14-day right of withdrawal."""
    billing = await Billing.start(api, unit_amount=3000)
    clock = await billing.clock("2026-04-01T00:00:00Z")
    customer, method = await billing.customer(test_clock=clock, country="de")
    subscription = await billing.subscribe(customer, default_payment_method=method)
    await billing.advance(clock, "2026-04-07T00:00:00Z")  # 6 of 30 days used
    ended = await billing.ok(
        f"/v1/subscriptions/{subscription['id']}/cancel", {"at_period_end": False}
    )
    assert (ended["status"], ended["ended_at"]) == ("canceled", "2026-04-07T00:00:00Z")
    assert ended["cancellation"]["refunded_amount"] == 2400
    (invoice,) = await billing.invoices(subscription["id"])
    order = await billing.get(f"/v1/orders/{invoice['order']}")
    assert (order["amount_refunded"], order["status"]) == (2400, "partially_refunded")
    assert "customer.subscription.deleted" in await _event_types(database)


@pytest.mark.parametrize("country", [None, "US", "CH"])
async def test_outside_the_eu_and_uk_an_immediate_cancellation_refunds_nothing(
    api: Api, country: str | None
) -> None:
    """No statutory right of withdrawal outside the EU and UK (or where the buyer's country
    is not known): cancelling at once ends the subscription with no refund, as Stripe's
    API does."""
    billing = await Billing.start(api, unit_amount=3000)
    clock = await billing.clock("2026-04-01T00:00:00Z")
    customer, method = await billing.customer(test_clock=clock, country=country)
    assert (await billing.get(f"/v1/customers/{customer}"))["country"] == country
    subscription = await billing.subscribe(customer, default_payment_method=method)
    await billing.advance(clock, "2026-04-07T00:00:00Z")  # 6 of 30 days used
    ended = await billing.ok(
        f"/v1/subscriptions/{subscription['id']}/cancel", {"at_period_end": False}
    )
    assert (ended["status"], ended["cancellation"]["refunded_amount"]) == ("canceled", 0)
    (invoice,) = await billing.invoices(subscription["id"])
    order = await billing.get(f"/v1/orders/{invoice['order']}")
    assert (order["amount_refunded"], order["status"]) == (0, "paid")


async def test_an_immediate_cancellation_after_the_window_refunds_nothing(api: Api) -> None:
    billing = await Billing.start(api)
    clock = await billing.clock("2026-04-01T00:00:00Z")
    customer, method = await billing.customer(test_clock=clock, country="GB")
    subscription = await billing.subscribe(customer, default_payment_method=method)
    await billing.advance(clock, "2026-05-20T00:00:00Z")
    ended = await billing.ok(
        f"/v1/subscriptions/{subscription['id']}/cancel", {"at_period_end": False}
    )
    assert (ended["status"], ended["cancellation"]["refunded_amount"]) == ("canceled", 0)


async def test_pause_bills_nothing_resume_bills_from_the_next_period_and_skip_skips_one(
    api: Api, database: Database
) -> None:
    billing = await Billing.start(api)
    clock = await billing.clock("2026-01-10T08:00:00Z")
    customer, method = await billing.customer(time_zone="America/New_York", test_clock=clock)
    subscription = await billing.subscribe(customer, default_payment_method=method)
    path = f"/v1/subscriptions/{subscription['id']}"

    paused = await billing.ok(f"{path}/pause")
    assert (paused["status"], paused["paused_at"], paused["next_cycle"]["amount"]) == (
        "paused",
        "2026-01-10T08:00:00Z",
        0,
    )
    await billing.advance(clock, "2026-03-20T00:00:00Z")  # 10 Feb and 10 Mar pass unbilled
    resumed = await billing.ok(f"{path}/resume")
    assert (resumed["status"], resumed["current_period_start"]) == (
        "active",
        "2026-03-10T07:00:00Z",  # 03:00 EDT: daylight saving began on 8 March
    )
    skipped = await billing.ok(f"{path}/skip", {})
    assert skipped["next_cycle"] == {
        "charge_date": "2026-04-10T07:00:00Z",
        "amount": 0,
        "cutoff": "2026-04-10T04:00:00Z",
        "ships_on": "2026-04-10",
    }
    assert skipped["skipped_cycle_charge_date"] == "2026-04-10T07:00:00Z"
    await billing.advance(clock, "2026-06-01T00:00:00Z")
    invoices = await billing.invoices(subscription["id"])
    assert [i["period_start"] for i in invoices] == [
        "2026-01-10T08:00:00Z",
        "2026-05-10T07:00:00Z",
    ]
    types = await _event_types(database)
    assert types.index("customer.subscription.paused") < types.index(
        "customer.subscription.resumed"
    )
    refused = await billing.post(f"{path}/resume", {})
    assert refused.status_code == 409
    assert refused.json()["type"] == PROBLEMS + "subscription-invalid-transition"


async def test_a_trial_charges_at_its_end_and_warns_three_days_before(
    api: Api, database: Database
) -> None:
    billing = await Billing.start(api, trial_days=14)
    clock = await billing.clock("2026-03-20T10:00:00Z")
    customer, method = await billing.customer(time_zone="Europe/Berlin", test_clock=clock)
    subscription = await billing.subscribe(customer, default_payment_method=method)
    assert (subscription["status"], subscription["trial_end"]) == (
        "trialing",
        "2026-04-03T09:00:00Z",  # 11:00 CET → 11:00 CEST two weeks later
    )
    assert subscription["current_cycle"] is None
    assert subscription["next_cycle"]["charge_date"] == "2026-04-03T09:00:00Z"
    assert await billing.invoices(subscription["id"]) == []
    await billing.advance(clock, "2026-04-01T00:00:00Z")
    assert "customer.subscription.trial_will_end" in await _event_types(database)
    await billing.advance(clock, "2026-04-04T00:00:00Z")
    (invoice,) = await billing.invoices(subscription["id"])
    assert (invoice["status"], invoice["period_start"], invoice["billing_reason"]) == (
        "paid",
        "2026-04-03T09:00:00Z",
        "subscription_create",
    )
    assert (await billing.get(f"/v1/subscriptions/{subscription['id']}"))["status"] == "active"
    assert (
        await _count(
            database,
            select(func.count()).select_from(Email).where(Email.kind == "subscription_reminder"),
        )
        == 1
    )


async def test_preview_of_a_plan_change_and_the_consent_record(api: Api) -> None:
    billing = await Billing.start(api, unit_amount=300)
    product = await api.product(billing.key, kind="digital", name="Zine club plus")
    bigger = await api.price(
        billing.key, product=product["id"], unit_amount=900, recurring={"interval": "month"}
    )
    customer, method = await billing.customer()
    terms = "$3.00 every month until you cancel; cancel any time in your account."
    subscription = await billing.subscribe(
        customer,
        default_payment_method=method,
        consent={"terms": terms, "ip_address": "203.0.113.9", "user_agent": "Firefox/140"},
    )
    preview = await billing.ok(
        f"/v1/subscriptions/{subscription['id']}/preview",
        {"items": [{"price": bigger["id"]}], "proration_date": "2026-03-16T12:00:00Z"},
    )
    assert {k: preview[k] for k in preview if k != "object"} == {
        "subscription": subscription["id"],
        "currency": "usd",
        "current_amount": 300,
        "new_amount": 900,
        "proration_date": "2026-03-16T12:00:00Z",
        "period_start": "2026-03-01T12:00:00Z",
        "period_end": "2026-04-01T12:00:00Z",
        "now_credit": 154,  # 16 of 31 days unused: 300 × 16/31 = 154.8
        "now_charge": 464,  # 900 × 16/31 = 464.5
        "now_amount_due": 310,
        "next_period_start": "2026-04-01T12:00:00Z",
        "next_period_amount": 900,
    }
    consent = await billing.get(f"/v1/subscriptions/{subscription['id']}/consent")
    assert {k: consent[k] for k in ("terms", "ip_address", "user_agent", "created")} == {
        "terms": terms,
        "ip_address": "203.0.113.9",
        "user_agent": "Firefox/140",
        "created": "2026-03-01T12:00:00Z",
    }


async def test_another_creator_sees_nothing_and_cannot_use_a_creators_clock(api: Api) -> None:
    billing = await Billing.start(api)
    customer, method = await billing.customer()
    subscription = await billing.subscribe(customer, default_payment_method=method)
    mine = await billing.clock("2026-03-01T00:00:00Z")
    other = await api.creator(name="Kiln & Clay", email="kiln@example.com")
    key = other["secret_key"]
    for path in (
        f"/v1/subscriptions/{subscription['id']}",
        f"/v1/subscriptions/{subscription['id']}/consent",
        f"/v1/test_clocks/{mine}",
    ):
        response = await api.http.get(path, headers=bearer(key))
        assert response.status_code == 404, path
    listed = await api.http.get("/v1/invoices", headers=bearer(key))
    assert listed.json()["data"] == []
    refused = await api.http.post(
        "/v1/customers",
        headers=bearer(key),
        json={"email": "a@example.com", "test_clock": mine},
    )
    assert refused.status_code == 404
    assert refused.json()["type"] == PROBLEMS + "test-clock-not-found"


async def test_client_mistakes_are_problems_naming_the_field(api: Api) -> None:
    billing = await Billing.start(api)
    one_time = await api.price(billing.key, product=(await api.product(billing.key))["id"])
    customer, _ = await billing.customer()
    response = await billing.post(
        "/v1/subscriptions", {"customer": customer, "items": [{"price": one_time["id"]}]}
    )
    assert response.status_code == 400
    assert response.json()["type"] == PROBLEMS + "invalid-subscription-items"
    assert "items[0]" in response.json()["detail"]
    bare = await billing.ok("/v1/customers", {"email": "new@example.com"}, status=201)
    response = await billing.post(
        "/v1/subscriptions", {"customer": bare["id"], "items": [{"price": billing.price}]}
    )
    assert response.status_code == 400
    assert response.json()["type"] == PROBLEMS + "no-default-payment-method"
    clock = await billing.clock("2026-03-01T00:00:00Z")
    response = await billing.post(
        f"/v1/test_clocks/{clock}/advance", {"frozen_time": "2026-02-01T00:00:00Z"}
    )
    assert response.status_code == 400
    assert response.json()["type"] == PROBLEMS + "test-clock-backwards"


async def test_a_price_change_is_announced_and_one_inside_seven_days_is_refused(
    api: Api, database: Database
) -> None:
    billing = await Billing.start(api)
    product = await api.product(billing.key, kind="digital", name="Zine club 2027")
    dearer = await api.price(
        billing.key, product=product["id"], unit_amount=400, recurring={"interval": "month"}
    )
    clock = await billing.clock("2026-03-01T12:00:00Z")
    customer, method = await billing.customer(test_clock=clock)
    subscription = await billing.subscribe(customer, default_payment_method=method)
    path = f"/v1/subscriptions/{subscription['id']}/price_change"
    too_soon = await billing.post(
        path, {"items": [{"price": dearer["id"]}], "effective_at": "2026-03-07T12:00:00Z"}
    )
    assert too_soon.status_code == 400
    assert too_soon.json()["type"] == PROBLEMS + "price-change-too-soon"
    assert too_soon.json()["earliest"] == "2026-03-08T12:00:00+00:00"

    scheduled = await billing.ok(
        path, {"items": [{"price": dearer["id"]}], "effective_at": "2026-04-20T00:00:00Z"}
    )
    assert scheduled["pending_update"] == {
        "effective_at": "2026-04-20T00:00:00Z",
        "items": [{"price": dearer["id"], "quantity": 1}],
    }
    await billing.advance(clock, "2026-06-02T00:00:00Z")
    invoices = await billing.invoices(subscription["id"])
    assert [(i["period_start"], i["amount_paid"]) for i in invoices] == [
        ("2026-03-01T12:00:00Z", 300),
        ("2026-04-01T12:00:00Z", 300),
        ("2026-05-01T12:00:00Z", 400),  # the first renewal on or after 20 April
        ("2026-06-01T12:00:00Z", 400),
    ]
    after = await billing.get(f"/v1/subscriptions/{subscription['id']}")
    assert (after["pending_update"], after["amount"]) == (None, 400)
    async with database.unit_of_work() as session:
        subjects = (
            await session.execute(
                select(Email.subject, Email.text_body).where(Email.kind == "subscription_reminder")
            )
        ).all()
    assert len(subjects) == 1
    assert subjects[0][0] == "The price of your Paper Lantern Zines subscription is changing"
    assert "costs $4.00 instead of $3.00" in subjects[0][1]


BOX = {
    "charge_day": 1,
    "ship_days_after_charge": 14,
    "cutoff_days_before_ship": 5,
    "signup_after_cutoff": "next_cycle",
}


async def test_a_box_with_a_delivery_calendar_before_and_after_the_cutoff(api: Api) -> None:
    billing = await Billing.start(api, unit_amount=3000, delivery=BOX)
    price = await billing.get(f"/v1/prices/{billing.price}")
    assert price["recurring"]["delivery"] == BOX

    early_clock = await billing.clock("2026-03-05T12:00:00Z")
    early, method = await billing.customer(test_clock=early_clock)
    joined = await billing.subscribe(early, default_payment_method=method)
    assert (joined["status"], joined["billing_cycle_anchor"]) == (
        "active",
        "2026-03-01T00:00:00Z",
    )
    assert joined["current_cycle"] == {
        "charge_date": "2026-03-01T00:00:00Z",
        "amount": 3000,
        "cutoff": "2026-03-10T00:00:00Z",
        "ships_on": "2026-03-15",
    }
    (paid,) = await billing.invoices(joined["id"])
    assert (paid["status"], paid["period_start"], paid["period_end"]) == (
        "paid",
        "2026-03-01T00:00:00Z",
        "2026-04-01T00:00:00Z",
    )

    late_clock = await billing.clock("2026-03-12T12:00:00Z")
    late, method = await billing.customer(test_clock=late_clock)
    waiting = await billing.subscribe(late, default_payment_method=method)
    assert (waiting["status"], waiting["current_cycle"]) == ("active", None)
    assert waiting["next_cycle"] == {
        "charge_date": "2026-04-01T00:00:00Z",
        "amount": 3000,
        "cutoff": "2026-04-10T00:00:00Z",
        "ships_on": "2026-04-15",
    }
    assert await billing.invoices(waiting["id"]) == []
    await billing.advance(late_clock, "2026-04-02T00:00:00Z")
    (first,) = await billing.invoices(waiting["id"])
    assert (first["status"], first["period_start"], first["amount_paid"]) == (
        "paid",
        "2026-04-01T00:00:00Z",
        3000,
    )


async def test_a_charge_day_is_for_monthly_prices(api: Api) -> None:
    creator = await api.creator()
    product = await api.product(creator["secret_key"])
    response = await api.http.post(
        "/v1/prices",
        headers=bearer(creator["secret_key"]),
        json={
            "product": product["id"],
            "currency": "usd",
            "unit_amount": 500,
            "recurring": {"interval": "week", "delivery": {"charge_day": 3}},
        },
    )
    assert response.status_code == 422
    assert "monthly" in response.text


async def test_a_plan_change_now_charges_or_refunds_the_rest_of_the_period(api: Api) -> None:
    billing = await Billing.start(api, unit_amount=300)
    product = await api.product(billing.key, kind="digital", name="Zine club plus")
    bigger = await api.price(
        billing.key, product=product["id"], unit_amount=900, recurring={"interval": "month"}
    )
    clock = await billing.clock("2026-03-01T12:00:00Z")
    customer, method = await billing.customer(test_clock=clock)
    subscription = await billing.subscribe(customer, default_payment_method=method)
    path = f"/v1/subscriptions/{subscription['id']}"
    await billing.advance(clock, "2026-03-16T12:00:00Z")  # 16 of 31 days left

    upgraded = await billing.ok(
        path,
        {"items": [{"price": bigger["id"]}], "proration_behavior": "create_prorations"},
    )
    assert (upgraded["amount"], upgraded["items"][0]["price"]) == (900, bigger["id"])
    invoices = await billing.invoices(subscription["id"])
    change = invoices[-1]
    assert {k: change[k] for k in ("billing_reason", "status", "amount_due", "amount_paid")} == {
        "billing_reason": "subscription_update",
        "status": "paid",
        "amount_due": 310,  # as the preview said: 464 for the new items less 154 unused
        "amount_paid": 310,
    }
    assert change["lines"][0]["proration"] is True

    downgraded = await billing.ok(
        path,
        {"items": [{"price": billing.price}], "proration_behavior": "create_prorations"},
    )
    assert downgraded["amount"] == 300
    # Back again: 16/31 of 900 unused (464) less 16/31 of 300 (154) is a credit of 310,
    # refunded from the period's latest payment (the upgrade's).
    upgrade_order = await billing.get(f"/v1/orders/{change['order']}")
    assert (upgrade_order["amount_refunded"], upgrade_order["status"]) == (310, "refunded")
    await billing.advance(clock, "2026-04-02T00:00:00Z")
    renewal = (await billing.invoices(subscription["id"]))[-1]
    assert (renewal["billing_reason"], renewal["amount_paid"]) == ("subscription_cycle", 300)


async def test_a_test_clock_stays_in_range_and_advances_in_bounded_steps(api: Api) -> None:
    billing = await Billing.start(api)
    response = await billing.post("/v1/test_clocks", {"frozen_time": "1999-12-31T00:00:00Z"})
    assert response.status_code == 422
    clock = await billing.clock("2026-01-01T00:00:00Z")
    response = await billing.post(
        f"/v1/test_clocks/{clock}/advance", {"frozen_time": "2033-01-01T00:00:00Z"}
    )
    assert response.status_code == 400
    assert response.json()["type"] == PROBLEMS + "test-clock-advance-too-far"
    advanced = await billing.advance(clock, "2031-12-31T00:00:00Z")
    assert advanced["frozen_time"] == "2031-12-31T00:00:00Z"
