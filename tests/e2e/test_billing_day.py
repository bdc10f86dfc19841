"""The platform billing day over HTTP with a test clock (ADR 0020): with
``STALLHOLDER_BILLING_DAY=1`` one buyer's three monthly plans, begun on three different
days and hours of March, are each charged a prorated first invoice up to 1 April and then
renew together at the start of 1 April: one consolidated charge for all three."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from stallholder.accounts.models import Customer
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
