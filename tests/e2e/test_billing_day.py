"""The platform billing day over HTTP with a test clock (ADR 0020): with
``STALLHOLDER_BILLING_DAY=1`` one buyer's three monthly plans, begun on three different
days and hours of March, are each charged a prorated first invoice up to 1 April and then
renew together at the start of 1 April: one consolidated charge for all three."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from stallholder.accounts.models import Customer
from stallholder.billing.models import Subscription
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.ledger import service as ledger
from stallholder.payments.models import SandboxCharge
from stallholder.settings import Settings
from tests.conftest import ADMIN_KEY, Api, bearer

pytestmark = pytest.mark.anyio


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "var",
        database_url=database_url,
        admin_key=ADMIN_KEY,
        base_url="http://testserver",
        embedded_worker=False,
        worker_retry_jitter=0.0,
        billing_day=1,
    )


async def _ok(api: Api, path: str, key: str, body: dict[str, Any], status: int = 201) -> Any:
    response = await api.http.post(path, headers=bearer(key), json=body)
    assert response.status_code == status, response.text
    return response.json()


async def _charges(database: Database) -> list[tuple[str, int]]:
    async with database.unit_of_work() as session:
        rows = await session.execute(
            select(SandboxCharge.idempotency_key, SandboxCharge.amount).order_by(
                SandboxCharge.idempotency_key
            )
        )
        return [(key, amount) for key, amount in rows]


async def test_a_billing_day_lines_up_three_creators_renewals_into_one_charge(
    api: Api, database: Database
) -> None:
    clock = await _ok(api, "/v1/test_clocks", ADMIN_KEY, {"frozen_time": "2026-03-10T12:00:00Z"})
    # (when the buyer subscribes, the prorated first invoice up to 1 April 00:00 UTC):
    # March has 2,678,400 seconds; 300 × remaining ÷ that, rounded down.
    signups = [
        ("2026-03-10T12:00:00Z", 208),  # 21 days 12 hours left: 208.06
        ("2026-03-17T18:30:00Z", 137),  # 14 days 5 h 30 min: 137.70
        ("2026-03-25T06:00:00Z", 65),  # 6 days 18 hours: 65.32
    ]
    subscriptions = []
    customers = []
    for n, (at, first_amount) in enumerate(signups):
        if n:
            await _ok(
                api, f"/v1/test_clocks/{clock['id']}/advance", ADMIN_KEY, {"frozen_time": at}, 200
            )
        creator = await api.creator(name=f"Creator {n}", email=f"creator{n}@example.com")
        key = creator["secret_key"]
        product = await api.product(key, kind="digital", name=f"Club {n}")
        price = await api.price(
            key, product=product["id"], unit_amount=300, recurring={"interval": "month"}
        )
        customer = await _ok(
            api,
            "/v1/customers",
            key,
            {"email": "reader@example.com", "time_zone": "UTC", "test_clock": clock["id"]},
        )
        customers.append(customer["id"])
        method = await _ok(
            api, f"/v1/customers/{customer['id']}/payment_methods", key, {"token": "tok_visa"}
        )
        subscription = await _ok(
            api,
            "/v1/subscriptions",
            key,
            {
                "customer": customer["id"],
                "items": [{"price": price["id"], "quantity": 1}],
                "default_payment_method": method["id"],
            },
        )
        assert (
            subscription["status"],
            subscription["billing_cycle_anchor"],
            subscription["current_period_start"],
            subscription["current_period_end"],
        ) == ("active", "2026-04-01T00:00:00Z", at, "2026-04-01T00:00:00Z")
        invoices = await api.http.get(
            "/v1/invoices", headers=bearer(key), params={"subscription": subscription["id"]}
        )
        [first] = invoices.json()["data"]
        assert (first["status"], first["amount_paid"], first["lines"][0]["proration"]) == (
            "paid",
            first_amount,
            True,
        )
        subscriptions.append((key, subscription["id"]))
    assert sorted(amount for _, amount in await _charges(database)) == [65, 137, 208]

    await _ok(
        api,
        f"/v1/test_clocks/{clock['id']}/advance",
        ADMIN_KEY,
        {"frozen_time": "2026-04-01T00:00:00Z"},
        200,
    )

    async with database.unit_of_work() as session:
        buyer = (
            await session.execute(select(Customer.buyer_id).where(Customer.id == customers[0]))
        ).scalar_one()
    charges = await _charges(database)
    assert len(charges) == 4
    assert (f"{buyer}:2026-04-01:usd:1:attempt:1", 900) in charges
    for key, subscription_id in subscriptions:
        invoices = await api.http.get(
            "/v1/invoices", headers=bearer(key), params={"subscription": subscription_id}
        )
        renewal = invoices.json()["data"][0]
        assert (renewal["status"], renewal["amount_paid"], renewal["period_end"]) == (
            "paid",
            300,
            "2026-05-01T00:00:00Z",
        )
        assert renewal["consolidated_charge"] is not None
    async with database.unit_of_work() as session:
        assert (await ledger.verify(session)).is_clean
        assert (
            await session.execute(select(func.count()).select_from(SandboxCharge))
        ).scalar_one() == 4


# Subscribing through a checkout session ------------------------------------------------------

TERMS_END = (
    "renewing automatically until you cancel. Cancel any time before a renewal and you are "
    "not charged again; the subscription then ends at the end of the period you have paid for."
)


async def test_a_checkout_subscription_is_aligned_to_the_billing_day_too(
    api: Api, database: Database
) -> None:
    """A buyer in Berlin subscribes to one creator through a checkout session and to
    another by the API: both are prorated to the start of 1 April in Berlin (22:00 UTC on
    31 March, summer time) and renew there together as one charge."""
    clock = await _ok(api, "/v1/test_clocks", ADMIN_KEY, {"frozen_time": "2026-03-10T12:00:00Z"})
    shops = []
    for n in range(2):
        creator = await api.creator(name=f"Creator {n}", email=f"creator{n}@example.com")
        key = creator["secret_key"]
        product = await api.product(key, kind="digital", name=f"Club {n}")
        price = await api.price(
            key, product=product["id"], unit_amount=300, recurring={"interval": "month"}
        )
        customer = await _ok(
            api,
            "/v1/customers",
            key,
            {
                "email": "reader@example.com",
                "time_zone": "Europe/Berlin",
                "test_clock": clock["id"],
            },
        )
        shops.append((key, price["id"], customer["id"]))

    key, price, customer = shops[0]
    opened = await _ok(
        api,
        "/v1/checkout/sessions",
        key,
        {"line_items": [{"price": price}], "customer": customer},
    )
    # 21 days 10 hours of a month (1 March 00:00 CET to 1 April 00:00 CEST) of 31 days
    # less the hour the clocks skip: 300 × 1,850,400 ÷ 2,674,800 = 207.54, rounded down.
    terms = (
        "At most $2.07 today for the time until 1 April 2026 (prorated to the second from "
        "when you subscribe); then $3.00 every month, first charged on 1 April 2026, "
        f"{TERMS_END}"
    )
    assert (opened["mode"], opened["renewal_terms"]) == ("subscription", terms)
    page = await api.http.get(f"/pay/{opened['id']}")
    assert page.status_code == 200
    assert "first charged on 1 April 2026" in page.text
    done = await _ok(
        api,
        f"/v1/checkout/sessions/{opened['id']}/confirm",
        key,
        {"payment_method": "tok_visa", "consent": True},
        200,
    )
    assert (done["status"], done["payment_status"]) == ("complete", "paid")
    by_checkout = (
        await api.http.get(f"/v1/subscriptions/{done['subscription']}", headers=bearer(key))
    ).json()
    assert (
        by_checkout["status"],
        by_checkout["billing_cycle_anchor"],
        by_checkout["current_period_start"],
        by_checkout["current_period_end"],
    ) == ("active", "2026-03-31T22:00:00Z", "2026-03-10T12:00:00Z", "2026-03-31T22:00:00Z")
    [first] = (
        await api.http.get(
            "/v1/invoices", headers=bearer(key), params={"subscription": done["subscription"]}
        )
    ).json()["data"]
    assert (first["amount_paid"], first["lines"][0]["proration"]) == (207, True)
    consent = (
        await api.http.get(f"/v1/subscriptions/{done['subscription']}/consent", headers=bearer(key))
    ).json()
    assert consent["terms"] == terms

    await _ok(
        api,
        f"/v1/test_clocks/{clock['id']}/advance",
        ADMIN_KEY,
        {"frozen_time": "2026-03-20T06:00:00Z"},
        200,
    )
    key, price, customer = shops[1]
    method = await _ok(api, f"/v1/customers/{customer}/payment_methods", key, {"token": "tok_visa"})
    by_api = await _ok(
        api,
        "/v1/subscriptions",
        key,
        {
            "customer": customer,
            "items": [{"price": price, "quantity": 1}],
            "default_payment_method": method["id"],
        },
    )
    assert by_api["billing_cycle_anchor"] == "2026-03-31T22:00:00Z"
    # 11 days 16 hours left: 300 × 1,008,000 ÷ 2,674,800 = 113.05.
    assert sorted(amount for _, amount in await _charges(database)) == [113, 207]

    await _ok(
        api,
        f"/v1/test_clocks/{clock['id']}/advance",
        ADMIN_KEY,
        {"frozen_time": "2026-03-31T22:00:00Z"},
        200,
    )
    async with database.unit_of_work() as session:
        buyer = (
            await session.execute(select(Customer.buyer_id).where(Customer.id == customer))
        ).scalar_one()
        assert (await ledger.verify(session)).is_clean
    charges = await _charges(database)
    assert sorted(amount for _, amount in charges) == [113, 207, 600]
    assert (f"{buyer}:2026-04-01:usd:1:attempt:1", 600) in charges


async def test_a_checkout_session_ends_before_the_billing_day_it_promises(
    api: Api, clock: FrozenClock
) -> None:
    """Without a customer the session quotes on UTC's calendar (the zone a new customer
    gets) and is held no later than the billing day's start, so its terms stay true."""
    clock.set(datetime(2026, 3, 31, 23, 50, tzinfo=UTC))
    creator = await api.creator()
    key = creator["secret_key"]
    product = await api.product(key, kind="digital", name="Club")
    price = await api.price(
        key, product=product["id"], unit_amount=300, recurring={"interval": "month"}
    )
    opened = await _ok(
        api,
        "/v1/checkout/sessions",
        key,
        {"line_items": [{"price": price["id"]}], "customer_email": "late@example.com"},
    )
    # Ten minutes of March's 2,678,400 seconds: 0.67 → nothing to pay today.
    assert opened["renewal_terms"] == (
        "Nothing today for the time until 1 April 2026 (prorated to the second from when you "
        f"subscribe); then $3.00 every month, first charged on 1 April 2026, {TERMS_END}"
    )
    assert opened["expires_at"] == "2026-04-01T00:00:00Z"
    done = await _ok(
        api,
        f"/v1/checkout/sessions/{opened['id']}/confirm",
        key,
        {"payment_method": "tok_visa", "consent": True},
        200,
    )
    assert (done["status"], done["payment_status"]) == ("complete", "no_payment_required")
    subscription = (
        await api.http.get(f"/v1/subscriptions/{done['subscription']}", headers=bearer(key))
    ).json()
    assert (subscription["status"], subscription["current_period_end"]) == (
        "active",
        "2026-04-01T00:00:00Z",
    )


async def test_a_buyer_whose_billing_day_is_another_is_refused_a_promise_it_breaks(
    api: Api, clock: FrozenClock, database: Database
) -> None:
    """The email is given only at confirm and belongs to a customer in Auckland, where 1
    April has begun: the billing day the terms promised (1 April, UTC) is not the buyer's,
    so nothing is subscribed or charged and the buyer is told to open a new session."""
    clock.set(datetime(2026, 3, 31, 12, 0, tzinfo=UTC))
    creator = await api.creator()
    key = creator["secret_key"]
    product = await api.product(key, kind="digital", name="Club")
    price = await api.price(
        key, product=product["id"], unit_amount=300, recurring={"interval": "month"}
    )
    await _ok(
        api, "/v1/customers", key, {"email": "kiwi@example.com", "time_zone": "Pacific/Auckland"}
    )
    opened = await _ok(api, "/v1/checkout/sessions", key, {"line_items": [{"price": price["id"]}]})
    assert opened["renewal_terms"].startswith("At most $0.04 today for the time until 1 April 2026")
    refused = await api.http.post(
        f"/v1/checkout/sessions/{opened['id']}/confirm",
        headers=bearer(key),
        json={"payment_method": "tok_visa", "consent": True, "customer_email": "kiwi@example.com"},
    )
    assert refused.status_code == 409, refused.text
    assert refused.json()["type"].endswith("/billing-day-changed")
    assert await _charges(database) == []
    async with database.unit_of_work() as session:
        assert (
            await session.execute(select(func.count()).select_from(Subscription))
        ).scalar_one() == 0
