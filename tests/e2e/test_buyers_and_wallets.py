"""Buyers across creators and wallets over HTTP, on SQLite and PostgreSQL: one person behind
two creators' customers, what each creator sees of the other (nothing but the buyer's own
card and wallet), top-ups with Idempotency-Key, auto top-up settings and the problems a
careless caller gets."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from stallholder.accounts.models import Customer
from stallholder.kit.db import Database
from stallholder.payments.models import SandboxCharge
from tests.conftest import Api, bearer

pytestmark = pytest.mark.anyio

PROBLEMS = "https://stallholder.dev/problems/"


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


async def _customer(api: Api, key: str, email: str) -> str:
    response = await api.http.post("/v1/customers", headers=bearer(key), json={"email": email})
    assert response.status_code == 201, response.text
    customer: str = response.json()["id"]
    return customer


async def _two_creators(api: Api) -> tuple[list[str], list[str]]:
    keys = [
        (await api.creator(name=name, email=f"{name.lower()}@example.com"))["secret_key"]
        for name in ("Kiln", "Zines")
    ]
    customers = [
        await _customer(api, keys[0], "Ana@Example.com"),
        await _customer(api, keys[1], "ana@example.com"),
    ]
    return keys, customers


async def _buyers(database: Database) -> dict[str, str]:
    async with database.unit_of_work() as session:
        rows = await session.execute(select(Customer.id, Customer.buyer_id))
        return {row[0]: row[1] for row in rows}


async def test_one_buyer_two_creators_and_each_sees_only_its_own_customer(
    api: Api, database: Database
) -> None:
    keys, customers = await _two_creators(api)
    # A sale through checkout finds or creates the customer, linked to the same buyer.
    creator = await api.creator(name="Moon", email="moon@example.com")
    product = await api.product(creator["secret_key"])
    price = await api.price(creator["secret_key"], product=product["id"])
    sale = await api.session(creator["secret_key"], price=price["id"], email="ANA@example.com")
    confirmed = await api.confirm(creator["secret_key"], sale["id"])
    assert confirmed.status_code == 200, confirmed.text

    buyers = await _buyers(database)
    assert len(buyers) == 3
    assert len(set(buyers.values())) == 1
    for key, own, other in (
        (keys[0], customers[0], customers[1]),
        (keys[1], customers[1], customers[0]),
    ):
        listed = await api.http.get("/v1/customers", headers=bearer(key))
        assert [c["id"] for c in listed.json()["data"]] == [own]
        assert "buyer" not in listed.json()["data"][0]
        foreign = await api.http.get(f"/v1/customers/{other}", headers=bearer(key))
        assert (foreign.status_code, foreign.json()["type"]) == (
            404,
            PROBLEMS + "customer-not-found",
        )
        for path in ("payment_methods", "wallet", "wallet/transactions"):
            response = await api.http.get(f"/v1/customers/{other}/{path}", headers=bearer(key))
            assert response.status_code == 404, path
        events = await api.http.get("/v1/events", headers=bearer(key))
        assert events.json()["data"] == []


async def test_a_card_saved_with_one_creator_is_listed_but_not_chargeable_by_another(
    api: Api,
) -> None:
    keys, customers = await _two_creators(api)
    saved = await api.http.post(
        f"/v1/customers/{customers[0]}/payment_methods",
        headers=bearer(keys[0]),
        json={"token": "tok_visa"},
    )
    assert saved.status_code == 201, saved.text
    card = saved.json()
    assert (card["customer"], card["default"], card["chargeable"]) == (customers[0], True, True)

    base = f"/v1/customers/{customers[1]}/payment_methods"
    listed = await api.http.get(base, headers=bearer(keys[1]))
    assert [
        (m["id"], m["customer"], m["default"], m["chargeable"]) for m in listed.json()["data"]
    ] == [(card["id"], customers[1], False, False)]
    for response in (
        await api.http.delete(f"{base}/{card['id']}", headers=bearer(keys[1])),
        await api.http.post(f"{base}/{card['id']}/default", headers=bearer(keys[1])),
        await api.http.post(
            f"/v1/customers/{customers[1]}/wallet/top_ups",
            headers=bearer(keys[1]),
            json={"amount": 1000, "currency": "usd", "payment_method": card["id"]},
        ),
    ):
        assert (response.status_code, response.json()["type"]) == (
            403,
            PROBLEMS + "payment-method-not-granted",
        ), response.text
    no_default = await api.http.post(
        f"/v1/customers/{customers[1]}/wallet/top_ups",
        headers=bearer(keys[1]),
        json={"amount": 1000, "currency": "usd"},
    )
    assert (no_default.status_code, no_default.json()["type"]) == (
        400,
        PROBLEMS + "no-default-payment-method",
    )

    # The buyer saves the same card with the second creator: granted, the same card.
    again = await api.http.post(base, headers=bearer(keys[1]), json={"token": "tok_visa"})
    assert (again.status_code, again.json()["id"], again.json()["chargeable"]) == (
        201,
        card["id"],
        True,
    )
    withdrawn = await api.http.delete(
        f"/v1/customers/{customers[0]}/payment_methods/{card['id']}", headers=bearer(keys[0])
    )
    assert (withdrawn.json()["chargeable"], withdrawn.json()["detached"]) == (False, None)
    detached = await api.http.delete(f"{base}/{card['id']}", headers=bearer(keys[1]))
    assert detached.json()["detached"] is not None
    assert (await api.http.get(base, headers=bearer(keys[1]))).json()["data"] == []


async def test_top_up_replays_under_its_key_and_the_wallet_shows_it_to_both_creators(
    api: Api, database: Database
) -> None:
    keys, customers = await _two_creators(api)
    await api.http.post(
        f"/v1/customers/{customers[0]}/payment_methods",
        headers=bearer(keys[0]),
        json={"token": "tok_visa"},
    )
    path = f"/v1/customers/{customers[0]}/wallet/top_ups"
    body = {"amount": 2000, "currency": "USD"}
    first = await api.http.post(
        path, headers={**bearer(keys[0]), "Idempotency-Key": "top-1"}, json=body
    )
    replay = await api.http.post(
        path, headers={**bearer(keys[0]), "Idempotency-Key": "top-1"}, json=body
    )

    assert first.status_code == 201, first.text
    assert replay.json() == first.json()
    top_up = first.json()
    assert {k: top_up[k] for k in ("object", "customer", "amount", "currency", "status")} == {
        "object": "wallet_top_up",
        "customer": customers[0],
        "amount": 2000,
        "currency": "usd",
        "status": "succeeded",
    }
    async with database.unit_of_work() as session:
        assert len((await session.execute(select(SandboxCharge))).scalars().all()) == 1
    for key, customer in zip(keys, customers, strict=True):
        wallet = await api.http.get(f"/v1/customers/{customer}/wallet", headers=bearer(key))
        assert wallet.status_code == 200, wallet.text
        assert wallet.json()["customer"] == customer
        assert wallet.json()["balances"] == [
            {"currency": "usd", "amount": 2000, "auto_top_up": None}
        ]
        [movement] = wallet.json()["transactions"]["data"]
        assert {k: movement[k] for k in ("type", "amount", "balance_after", "reference")} == {
            "type": "top_up",
            "amount": 2000,
            "balance_after": 2000,
            "reference": None,
        }


async def test_a_declined_top_up_is_a_402_and_adds_nothing(api: Api) -> None:
    keys, customers = await _two_creators(api)
    await api.http.post(
        f"/v1/customers/{customers[0]}/payment_methods",
        headers=bearer(keys[0]),
        json={"token": "tok_chargeCustomerFail"},
    )
    declined = await api.http.post(
        f"/v1/customers/{customers[0]}/wallet/top_ups",
        headers=bearer(keys[0]),
        json={"amount": 2000, "currency": "usd"},
    )
    assert (declined.status_code, declined.json()["type"], declined.json()["decline_code"]) == (
        402,
        PROBLEMS + "payment-declined",
        "card_declined",
    )
    wallet = await api.http.get(f"/v1/customers/{customers[0]}/wallet", headers=bearer(keys[0]))
    assert wallet.json()["balances"] == [{"currency": "usd", "amount": 0, "auto_top_up": None}]
    assert wallet.json()["transactions"]["data"] == []


async def test_auto_top_up_settings_and_mistakes(api: Api) -> None:
    keys, customers = await _two_creators(api)
    card = (
        await api.http.post(
            f"/v1/customers/{customers[0]}/payment_methods",
            headers=bearer(keys[0]),
            json={"token": "tok_visa"},
        )
    ).json()
    path = f"/v1/customers/{customers[0]}/wallet/auto_top_up"
    on = await api.http.post(
        path,
        headers=bearer(keys[0]),
        json={"currency": "usd", "threshold": 500, "amount": 2000},
    )
    assert on.status_code == 200, on.text
    assert on.json() == {
        "currency": "usd",
        "amount": 0,
        "auto_top_up": {"threshold": 500, "amount": 2000, "payment_method": card["id"]},
    }
    half = await api.http.post(
        path, headers=bearer(keys[0]), json={"currency": "usd", "threshold": 500}
    )
    assert (half.status_code, half.json()["type"]) == (400, PROBLEMS + "invalid-auto-top-up")
    negative = await api.http.post(
        f"/v1/customers/{customers[0]}/wallet/top_ups",
        headers=bearer(keys[0]),
        json={"amount": 0, "currency": "usd"},
    )
    assert negative.status_code == 422
    assert [e["loc"] for e in negative.json()["errors"]] == ["amount"]
    off = await api.http.post(path, headers=bearer(keys[0]), json={"currency": "usd"})
    assert off.json()["auto_top_up"] is None
