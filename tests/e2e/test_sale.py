"""The core sale, end to end over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.kit.db import Database
from stallholder.ledger import service as ledger
from tests.conftest import Api, bearer

pytestmark = pytest.mark.anyio


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


async def _verify(database: Database) -> ledger.VerifyReport:
    async with database.unit_of_work() as session:
        assert isinstance(session, AsyncSession)
        return await ledger.verify(session)


async def test_sale_partial_refund_and_exact_ledger(api: Api, database: Database) -> None:
    creator = await api.creator(name="Paper Lantern Zines")
    sk = creator["secret_key"]
    assert creator["slug"] == "paper-lantern-zines"
    product = await api.product(sk, name="Riso zine #12")
    price = await api.price(sk, product=product["id"], unit_amount=1500)
    session = await api.session(sk, price=price["id"], quantity=2)
    assert (session["status"], session["amount_total"], session["currency"]) == (
        "open",
        3000,
        "usd",
    )

    confirmed = await api.confirm(sk, session["id"])
    assert confirmed.status_code == 200, confirmed.text
    body = confirmed.json()
    assert (body["status"], body["payment_status"]) == ("complete", "paid")

    order = (await api.http.get(f"/v1/orders/{body['order']}", headers=bearer(sk))).json()
    assert order["status"] == "paid"
    # 2 × 1500; processor fee 2.9% + 30 = 87 + 30; platform fee 5% = 150.
    assert (order["amount_total"], order["processor_fee"], order["platform_fee"]) == (
        3000,
        117,
        150,
    )
    assert order["receipt"]["number"] == "PAPER-LANTERN-ZINES-000001"
    assert order["receipt"]["amount_paid"] == "$30.00"
    assert (await api.http.get("/v1/balance", headers=bearer(sk))).json()["available"] == [
        {"amount": 2733, "currency": "usd"}
    ]

    refund = await api.http.post(
        "/v1/refunds", headers=bearer(sk), json={"order": order["id"], "amount": 1000}
    )
    assert refund.status_code == 201, refund.text
    assert refund.json()["amount"] == 1000

    order = (await api.http.get(f"/v1/orders/{order['id']}", headers=bearer(sk))).json()
    assert (order["status"], order["amount_refunded"]) == ("partially_refunded", 1000)
    # The refund reverses 1000 × (150 / 3000) = 50 platform fee and 1000 × (117 / 3000) = 39
    # processor fee, so the creator gives back 911.
    assert (await api.http.get("/v1/balance", headers=bearer(sk))).json()["available"] == [
        {"amount": 1822, "currency": "usd"}
    ]

    entries = (await api.http.get("/v1/ledger/entries", headers=bearer(sk))).json()
    assert [entry["kind"] for entry in entries["data"]] == ["refund", "payment"]
    creator_account = f"creator:{creator['id']}:balance"
    assert {line["account"]: line["amount"] for line in entries["data"][1]["lines"]} == {
        "external:buyer_funds": -3000,
        creator_account: 2733,
        "platform:fees": 150,
        "processor:fees": 117,
    }
    assert {line["account"]: line["amount"] for line in entries["data"][0]["lines"]} == {
        "external:buyer_funds": 1000,
        creator_account: -911,
        "platform:fees": -50,
        "processor:fees": -39,
    }

    report = await _verify(database)
    assert report.is_clean
    assert (report.transactions_checked, report.accounts_checked) == (2, 4)


async def test_full_refund_in_parts_reverses_everything_exactly(
    api: Api, database: Database
) -> None:
    creator, price = await api.shop(unit_amount=999)
    sk = creator["secret_key"]
    session = await api.session(sk, price=price["id"], quantity=1)
    order_id = (await api.confirm(sk, session["id"])).json()["order"]
    for amount in (333, 333, 333):
        assert (
            await api.http.post(
                "/v1/refunds", headers=bearer(sk), json={"order": order_id, "amount": amount}
            )
        ).status_code == 201
    order = (await api.http.get(f"/v1/orders/{order_id}", headers=bearer(sk))).json()
    assert (order["status"], order["amount_refunded"]) == ("refunded", 999)
    assert (await api.http.get("/v1/balance", headers=bearer(sk))).json()["available"] == [
        {"amount": 0, "currency": "usd"}
    ]
    again = await api.http.post(
        "/v1/refunds", headers=bearer(sk), json={"order": order_id, "amount": 1}
    )
    assert again.status_code == 409
    assert again.json()["type"] == "https://stallholder.dev/problems/order-already-refunded"
    assert (await _verify(database)).is_clean


@pytest.mark.parametrize(
    ("currency", "unit_amount", "processor_fee", "platform_fee"),
    [
        # $30.00: 2.9% + 30 cents = 117; 5% + the creator's 40 cents = 190
        ("usd", 3000, 117, 190),
        # ¥3000: 2.9% and no fixed part = 87; 5% + the creator's ¥5 = 155 (not ¥40 or ¥30)
        ("jpy", 3000, 87, 155),
        # 3.000 KWD: 2.9% = 87 fils; 5% and no fixed part in kwd at all = 150 (not 0.040)
        ("kwd", 3000, 87, 150),
    ],
)
async def test_fixed_fees_are_taken_in_the_sales_own_currency(
    api: Api, currency: str, unit_amount: int, processor_fee: int, platform_fee: int
) -> None:
    creator = await api.creator(platform_fee_fixed={"usd": 40, "jpy": 5})
    assert creator["platform_fee_fixed"] == {"usd": 40, "jpy": 5}
    sk = creator["secret_key"]
    product = await api.product(sk)
    price = await api.price(sk, product=product["id"], unit_amount=unit_amount, currency=currency)
    session = await api.session(sk, price=price["id"])
    confirmed = await api.confirm(sk, session["id"])
    order = (
        await api.http.get(f"/v1/orders/{confirmed.json()['order']}", headers=bearer(sk))
    ).json()
    assert (order["currency"], order["processor_fee"], order["platform_fee"]) == (
        currency,
        processor_fee,
        platform_fee,
    )
