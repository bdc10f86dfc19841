"""The $3 case over HTTP with a test clock, on SQLite and PostgreSQL (ADR 0016, 0019):
one buyer with three creators' $3/month plans. By card, the three signups are a charge
each (13%), and every month after that the three renewals are ONE consolidated charge
(2.9% of $9 + 30¢ = 56¢, split 19/19/18 over the creators), so the fee report shows
each creator's effective fee falling toward 6.2% beside 13% charged one by one; with a
$20 wallet top-up the renewals are paid from the wallet, one card charge in all, and the
effective fee is 4.33% beside 13% — until the wallet runs short and the card pays the
month's three renewals again, in one charge."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from stallholder.accounts.models import Customer
from stallholder.billing.models import ConsolidatedCharge, ConsolidatedChargePart, Invoice
from stallholder.kit.db import Database
from stallholder.ledger import service as ledger
from stallholder.orders.models import Order
from stallholder.payments.models import PaymentAttempt, SandboxCharge
from stallholder.wallets import service as wallets
from tests.conftest import ADMIN_KEY, Api, bearer

pytestmark = pytest.mark.anyio

CREATORS = ("Paper Lantern Zines", "Kiln and Clay", "Seed Library")


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


async def _ok(api: Api, path: str, key: str, body: dict[str, Any], status: int = 201) -> Any:
    response = await api.http.post(path, headers=bearer(key), json=body)
    assert response.status_code == status, response.text
    return response.json()


async def _charges(database: Database) -> int:
    async with database.unit_of_work() as session:
        return int(
            (await session.execute(select(func.count()).select_from(SandboxCharge))).scalar_one()
        )


async def _report(api: Api, key: str) -> list[dict[str, Any]]:
    response = await api.http.get("/v1/reports/fees", headers=bearer(key))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "fee_report"
    rows: list[dict[str, Any]] = body["data"]
    return rows


class ThreePlans:
    """Three creators with a $3/month plan each, and one buyer (one email) behind a
    customer of each, on an admin test clock."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.keys: list[str] = []
        self.creators: list[str] = []
        self.prices: list[str] = []
        self.customers: list[str] = []
        self.methods: list[str] = []
        self.clock = ""

    async def start(self) -> ThreePlans:
        clock = await _ok(
            self.api,
            "/v1/test_clocks",
            ADMIN_KEY,
            {"frozen_time": "2026-03-01T12:00:00Z", "name": "three plans"},
        )
        self.clock = clock["id"]
        for name in CREATORS:
            creator = await self.api.creator(
                name=name, email=f"{name.split()[0].lower()}@example.com"
            )
            key = creator["secret_key"]
            product = await self.api.product(key, kind="digital", name=f"{name} club")
            price = await self.api.price(
                key, product=product["id"], unit_amount=300, recurring={"interval": "month"}
            )
            customer = await _ok(
                self.api,
                "/v1/customers",
                key,
                {
                    "email": "reader@example.com",
                    "time_zone": "UTC",
                    "test_clock": self.clock,
                    # In the EU: the right of withdrawal applies (the cooling-off test).
                    "country": "IE",
                },
            )
            method = await _ok(
                self.api,
                f"/v1/customers/{customer['id']}/payment_methods",
                key,
                {"token": "tok_visa"},
            )
            self.keys.append(key)
            self.creators.append(creator["id"])
            self.prices.append(price["id"])
            self.customers.append(customer["id"])
            self.methods.append(method["id"])
        return self

    async def subscribe_all(self) -> list[str]:
        subscriptions = []
        for key, price, customer, method in zip(
            self.keys, self.prices, self.customers, self.methods, strict=True
        ):
            subscription = await _ok(
                self.api,
                "/v1/subscriptions",
                key,
                {
                    "customer": customer,
                    "items": [{"price": price, "quantity": 1}],
                    "default_payment_method": method,
                },
            )
            assert subscription["status"] == "active"
            subscriptions.append(subscription["id"])
        return subscriptions

    async def advance(self, frozen_time: str) -> None:
        await _ok(
            self.api,
            f"/v1/test_clocks/{self.clock}/advance",
            ADMIN_KEY,
            {"frozen_time": frozen_time},
            status=200,
        )

    async def invoices(self, index: int, subscription: str) -> list[tuple[str, Any, Any]]:
        response = await self.api.http.get(
            "/v1/invoices",
            headers=bearer(self.keys[index]),
            params={"subscription": subscription, "limit": 100},
        )
        assert response.status_code == 200, response.text
        return [
            (invoice["status"], invoice["charge"] is not None, invoice["wallet_transaction"])
            for invoice in reversed(response.json()["data"])
        ]


def _row(creator: str, **figures: Any) -> dict[str, Any]:
    return {"object": "creator_fees", "creator": creator, "currency": "usd", **figures}


async def _charge_keys(database: Database) -> list[tuple[str, int, int]]:
    """(idempotency key, amount, processor fee) of every sandbox charge, by key."""
    async with database.unit_of_work() as session:
        rows = await session.execute(
            select(
                SandboxCharge.idempotency_key, SandboxCharge.amount, SandboxCharge.processor_fee
            ).order_by(SandboxCharge.idempotency_key)
        )
        return [(key, amount, fee) for key, amount, fee in rows]


async def _parts_fees(database: Database) -> dict[str, int]:
    """Each creator's parts of consolidated charges' actual processor fees, summed."""
    async with database.unit_of_work() as session:
        rows = await session.execute(
            select(ConsolidatedChargePart.creator_id, ConsolidatedChargePart.processor_fee)
        )
        fees: dict[str, int] = {}
        for creator, fee in rows:
            fees[creator] = fees.get(creator, 0) + int(fee or 0)
        return fees


async def test_by_card_three_creators_renewals_are_one_charge_a_month(
    api: Api, database: Database
) -> None:
    plans = await ThreePlans(api).start()
    subscriptions = await plans.subscribe_all()
    assert await _charges(database) == 3  # the signups: each request charges its own
    await plans.advance("2026-04-01T12:00:00Z")
    # April's three renewals (one per creator) are one charge of 900 on the buyer's card.
    assert await _charges(database) == 4
    async with database.unit_of_work() as session:
        buyer = (
            await session.execute(
                select(Customer.buyer_id).where(Customer.id == plans.customers[0])
            )
        ).scalar_one()
    april = f"{buyer}:2026-04-01:usd:1:attempt:1"
    assert [row for row in await _charge_keys(database) if row[0] == april] == [
        (april, 900, 56)  # 2.9% of 900 (26) + 30
    ]
    # Each creator's April invoice is paid by that charge, with an order of its own.
    consolidated = set()
    for index, subscription in enumerate(subscriptions):
        response = await api.http.get(
            "/v1/invoices",
            headers=bearer(plans.keys[index]),
            params={"subscription": subscription, "limit": 100},
        )
        signup, renewal = reversed(response.json()["data"])
        assert signup["consolidated_charge"] is None
        assert (renewal["status"], renewal["amount_paid"], renewal["attempt_count"]) == (
            "paid",
            300,
            1,
        )
        assert renewal["order"] is not None
        consolidated.add((renewal["consolidated_charge"], renewal["charge"]))
    ((charge_id, attempt_id),) = consolidated
    assert charge_id.startswith("cc_")
    async with database.unit_of_work() as session:
        charge = await session.get(ConsolidatedCharge, charge_id)
        assert charge is not None
        assert (charge.amount, charge.charge_day, charge.sequence) == (900, "2026-04-01", 1)
        # The 56 split largest-remainder over three equal parts: 19, 19, 18, exactly.
        assert sorted(part.processor_fee or 0 for part in charge.parts) == [18, 19, 19]
        assert sorted(part.creator_id for part in charge.parts) == sorted(plans.creators)
        orders = (
            (await session.execute(select(Order).where(Order.payment_attempt_id == attempt_id)))
            .scalars()
            .all()
        )
        assert sorted(order.creator_id for order in orders) == sorted(plans.creators)
        assert [order.amount_total for order in orders] == [300, 300, 300]
        assert sum(order.processor_fee for order in orders) == 56
        attempt = await session.get(PaymentAttempt, attempt_id)
        assert attempt is not None
        assert (attempt.purpose, attempt.connected_account) == ("consolidated_charge", None)
        assert (await ledger.verify(session)).is_clean

    # A second month: one more charge for the three renewals.
    await plans.advance("2026-05-01T12:00:00Z")
    assert await _charges(database) == 5
    parts = await _parts_fees(database)
    assert sum(parts.values()) == 112  # two charges' fees of 56, split exactly
    # Each creator: 39 at signup and its two parts; beside 3 × 39 charged one by one.
    expected = [
        _row(
            creator,
            invoices_paid=3,
            paid_by_card=3,
            paid_from_wallet=0,
            gross=900,
            processing_fees=39 + parts[creator],
            effective_fee_percent={75: "8.33", 76: "8.44", 77: "8.56"}[39 + parts[creator]],
            separate_charges_fees=117,
            separate_charges_percent="13.00",
            saved=117 - 39 - parts[creator],
        )
        for creator in sorted(plans.creators)
    ]
    report = await _report(api, ADMIN_KEY)
    assert report == expected
    # 36 to 38 for two months of renewals: 8.33% to 8.56% over three months, not 13%.
    assert sum(row["processing_fees"] for row in report) == 3 * 39 + 112
    async with database.unit_of_work() as session:
        assert (await ledger.verify(session)).is_clean
        paid = (
            await session.execute(
                select(func.count()).select_from(Invoice).where(Invoice.status == "paid")
            )
        ).scalar_one()
        assert paid == 9


async def test_the_3_dollar_case_with_a_20_dollar_wallet_costs_under_5_percent(
    api: Api, database: Database
) -> None:
    plans = await ThreePlans(api).start()
    top_up = await _ok(
        api,
        f"/v1/customers/{plans.customers[0]}/wallet/top_ups",
        plans.keys[0],
        {"amount": 2000, "currency": "usd"},
    )
    assert top_up["status"] == "succeeded"
    subscriptions = await plans.subscribe_all()
    await plans.advance("2026-04-01T12:00:00Z")

    # Six invoices (three signups, three renewals) and one card charge: the top-up.
    assert await _charges(database) == 1
    for index, subscription in enumerate(subscriptions):
        paid = await plans.invoices(index, subscription)
        assert [(status, charged) for status, charged, _ in paid] == [("paid", False)] * 2
        assert all(movement is not None for _, _, movement in paid)
    # The top-up's fee (2.9% of 2000 + 30 = 88) falls on the $18 spent at 4.4%: 13 per
    # $3 invoice, 26 of each creator's 600 (4.33%), beside 78 (13%) charged one by one.
    expected = {
        creator: _row(
            creator,
            invoices_paid=2,
            paid_by_card=0,
            paid_from_wallet=2,
            gross=600,
            processing_fees=26,
            effective_fee_percent="4.33",
            separate_charges_fees=78,
            separate_charges_percent="13.00",
            saved=52,
        )
        for creator in plans.creators
    }
    assert await _report(api, ADMIN_KEY) == [expected[c] for c in sorted(plans.creators)]
    # A creator's key sees its own row only.
    assert await _report(api, plans.keys[1]) == [expected[plans.creators[1]]]
    wallet = await api.http.get(
        f"/v1/customers/{plans.customers[2]}/wallet", headers=bearer(plans.keys[2])
    )
    assert wallet.json()["balances"] == [{"currency": "usd", "amount": 200, "auto_top_up": None}]

    # The wallet holds 200, less than a $3 renewal: the card pays May's three in full,
    # in one consolidated charge of 900 (fee 56, split 19/19/18).
    await plans.advance("2026-05-01T12:00:00Z")
    assert await _charges(database) == 2
    for index, subscription in enumerate(subscriptions):
        paid = await plans.invoices(index, subscription)
        assert [(status, charged) for status, charged, _ in paid][-1] == ("paid", True)
    parts = await _parts_fees(database)
    assert sorted(parts.values()) == [18, 19, 19]
    report = await _report(api, ADMIN_KEY)
    assert [row["processing_fees"] for row in report] == [26 + parts[c] for c in sorted(parts)]
    assert sorted(row["effective_fee_percent"] for row in report) == ["4.89", "5.00", "5.00"]


async def test_a_publishable_key_cannot_read_the_fee_report(api: Api) -> None:
    creator = await api.creator()
    response = await api.http.get("/v1/reports/fees", headers=bearer(creator["publishable_key"]))
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"


async def test_cancelling_at_once_in_the_cooling_off_window_refunds_to_the_wallet(
    api: Api, database: Database
) -> None:
    plans = await ThreePlans(api).start()
    await _ok(
        api,
        f"/v1/customers/{plans.customers[0]}/wallet/top_ups",
        plans.keys[0],
        {"amount": 2000, "currency": "usd"},
    )
    subscriptions = await plans.subscribe_all()  # 900 from the wallet: 1100 left
    await plans.advance("2026-03-04T12:00:00Z")  # 3 of 31 days used
    ended = await _ok(
        api,
        f"/v1/subscriptions/{subscriptions[1]}/cancel",
        plans.keys[1],
        {"at_period_end": False},
        status=200,
    )
    # 28 of 31 days unused: 300 × 28 ÷ 31 = 270 (rounded down), back to the wallet.
    assert (ended["status"], ended["cancellation"]["refunded_amount"]) == ("canceled", 270)
    wallet = await api.http.get(
        f"/v1/customers/{plans.customers[1]}/wallet", headers=bearer(plans.keys[1])
    )
    body = wallet.json()
    assert body["balances"] == [{"currency": "usd", "amount": 1370, "auto_top_up": None}]
    refund = body["transactions"]["data"][0]
    assert {k: refund[k] for k in ("type", "amount", "purpose", "balance_after")} == {
        "type": "refund",
        "amount": 270,
        "purpose": "invoice",
        "balance_after": 1370,
    }
    assert await _charges(database) == 1  # the top-up; nothing went through a card
    async with database.unit_of_work() as session:
        assert (await ledger.verify(session)).is_clean
        assert (await wallets.mismatched_wallets(session))[1] == []


async def test_a_declined_consolidated_charge_puts_every_invoice_into_its_own_dunning(
    api: Api, database: Database
) -> None:
    plans = await ThreePlans(api).start()
    subscriptions = await plans.subscribe_all()
    # The buyer's card stops working: each creator now renews on a failing card.
    for index, subscription in enumerate(subscriptions):
        failing = await _ok(
            api,
            f"/v1/customers/{plans.customers[index]}/payment_methods",
            plans.keys[index],
            {"token": "tok_chargeCustomerFail"},
        )
        await _ok(
            api,
            f"/v1/subscriptions/{subscription}",
            plans.keys[index],
            {"default_payment_method": failing["id"]},
            status=200,
        )
    await plans.advance("2026-04-01T12:00:00Z")

    async with database.unit_of_work() as session:
        buyer = (
            await session.execute(
                select(Customer.buyer_id).where(Customer.id == plans.customers[0])
            )
        ).scalar_one()
    april = f"{buyer}:2026-04-01:usd:1:attempt:1"
    keys = await _charge_keys(database)
    assert len(keys) == 4  # three signups and one consolidated charge, declined
    assert [row[:2] for row in keys if row[0] == april] == [(april, 900)]
    renewals = []
    for index, subscription in enumerate(subscriptions):
        response = await api.http.get(
            f"/v1/subscriptions/{subscription}", headers=bearer(plans.keys[index])
        )
        assert response.json()["status"] == "past_due"
        invoices = await api.http.get(
            "/v1/invoices",
            headers=bearer(plans.keys[index]),
            params={"subscription": subscription, "limit": 100},
        )
        renewal = invoices.json()["data"][0]
        assert (
            renewal["status"],
            renewal["attempt_count"],
            renewal["next_payment_attempt"],
            renewal["order"],
        ) == ("open", 1, "2026-04-02T12:00:00Z", None)
        assert renewal["consolidated_charge"].startswith("cc_")
        assert "declined" in renewal["last_payment_error"]
        renewals.append(renewal["id"])

    # The first retry, a day later, charges each invoice on its own.
    await plans.advance("2026-04-02T12:00:00Z")
    keys = await _charge_keys(database)
    assert len(keys) == 7
    assert {key for key, _, _ in keys if ":attempt:2" in key} == {
        f"{invoice}:attempt:2" for invoice in renewals
    }
    async with database.unit_of_work() as session:
        assert (await ledger.verify(session)).is_clean
        assert (
            await session.execute(select(func.count()).select_from(Order))
        ).scalar_one() == 3  # the signups only
