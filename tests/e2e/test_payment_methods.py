"""Saved payment methods over HTTP, on SQLite and PostgreSQL: attach, list, default,
detach, and what a careless or foreign caller gets."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Api, bearer

pytestmark = pytest.mark.anyio

PROBLEMS = "https://stallholder.dev/problems/"


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


async def _customer(api: Api, key: str, email: str = "buyer@example.com") -> dict[str, Any]:
    response = await api.http.post("/v1/customers", headers=bearer(key), json={"email": email})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _save(api: Api, key: str, customer: str, token: str) -> dict[str, Any]:
    response = await api.http.post(
        f"/v1/customers/{customer}/payment_methods", headers=bearer(key), json={"token": token}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _listed(api: Api, key: str, customer: str, **params: Any) -> dict[str, Any]:
    response = await api.http.get(
        f"/v1/customers/{customer}/payment_methods", headers=bearer(key), params=params
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_attach_list_default_and_detach(api: Api) -> None:
    creator = await api.creator()
    sk = creator["secret_key"]
    customer = (await _customer(api, sk))["id"]

    first = await _save(api, sk, customer, "tok_visa")
    second = await _save(api, sk, customer, "tok_chargeCustomerFail")

    assert first["id"].startswith("pm_")
    assert {k: first[k] for k in ("object", "customer", "type", "gateway", "default")} == {
        "object": "payment_method",
        "customer": customer,
        "type": "card",
        "gateway": "sandbox",
        "default": True,
    }
    assert (second["default"], second["detached"]) == (False, None)
    listed = await _listed(api, sk, customer)
    assert [(m["id"], m["default"]) for m in listed["data"]] == [
        (second["id"], False),
        (first["id"], True),
    ]
    assert listed["has_more"] is False
    page = await _listed(api, sk, customer, limit=1)
    assert ([m["id"] for m in page["data"]], page["has_more"]) == ([second["id"]], True)
    rest = await _listed(api, sk, customer, limit=1, starting_after=second["id"])
    assert ([m["id"] for m in rest["data"]], rest["has_more"]) == ([first["id"]], False)

    made_default = await api.http.post(
        f"/v1/customers/{customer}/payment_methods/{second['id']}/default", headers=bearer(sk)
    )
    assert (made_default.status_code, made_default.json()["default"]) == (200, True)
    assert [(m["id"], m["default"]) for m in (await _listed(api, sk, customer))["data"]] == [
        (second["id"], True),
        (first["id"], False),
    ]

    detached = await api.http.delete(
        f"/v1/customers/{customer}/payment_methods/{second['id']}", headers=bearer(sk)
    )
    assert detached.status_code == 200, detached.text
    assert (detached.json()["default"], detached.json()["detached"] is not None) == (False, True)
    assert [m["id"] for m in (await _listed(api, sk, customer))["data"]] == [first["id"]]
    again = await api.http.delete(
        f"/v1/customers/{customer}/payment_methods/{second['id']}", headers=bearer(sk)
    )
    assert (again.status_code, again.json()["type"]) == (404, PROBLEMS + "payment-method-not-found")
    cannot_default = await api.http.post(
        f"/v1/customers/{customer}/payment_methods/{second['id']}/default", headers=bearer(sk)
    )
    assert cannot_default.status_code == 404


async def test_another_creators_customer_is_not_found(api: Api) -> None:
    owner = await api.creator(name="Owner")
    other = await api.creator(name="Other", email="other@example.com")
    customer = (await _customer(api, owner["secret_key"]))["id"]
    method = await _save(api, owner["secret_key"], customer, "tok_visa")
    foreign = bearer(other["secret_key"])
    base = f"/v1/customers/{customer}/payment_methods"

    responses = [
        await api.http.post(base, headers=foreign, json={"token": "tok_visa"}),
        await api.http.get(base, headers=foreign),
        await api.http.delete(f"{base}/{method['id']}", headers=foreign),
        await api.http.post(f"{base}/{method['id']}/default", headers=foreign),
    ]

    assert [(r.status_code, r.json()["type"]) for r in responses] == [
        (404, PROBLEMS + "customer-not-found")
    ] * 4
    assert [m["id"] for m in (await _listed(api, owner["secret_key"], customer))["data"]] == [
        method["id"]
    ]
    # A method id from another customer of the same creator is not this customer's.
    second = (await _customer(api, owner["secret_key"], "two@example.com"))["id"]
    crossed = await api.http.post(
        f"/v1/customers/{second}/payment_methods/{method['id']}/default",
        headers=bearer(owner["secret_key"]),
    )
    assert (crossed.status_code, crossed.json()["type"]) == (
        404,
        PROBLEMS + "payment-method-not-found",
    )


@pytest.mark.parametrize(
    ("token", "status", "slug"),
    [
        ("4242424242424242", 400, "card-number-rejected"),
        ("4242 4242 4242 4242", 400, "card-number-rejected"),
        ("visa", 400, "invalid-payment-method"),
        ("tok_chargeDeclined", 402, "payment-method-declined"),
        ("tok_nope", 402, "payment-method-declined"),
    ],
)
async def test_card_numbers_and_bad_tokens_are_refused_and_nothing_is_saved(
    api: Api, token: str, status: int, slug: str
) -> None:
    creator = await api.creator()
    sk = creator["secret_key"]
    customer = (await _customer(api, sk))["id"]

    response = await api.http.post(
        f"/v1/customers/{customer}/payment_methods", headers=bearer(sk), json={"token": token}
    )

    assert (response.status_code, response.json()["type"]) == (status, PROBLEMS + slug)
    assert token not in response.text or slug != "card-number-rejected"
    assert (await _listed(api, sk, customer))["data"] == []


async def test_a_publishable_key_cannot_save_payment_methods(api: Api) -> None:
    creator = await api.creator()
    customer = (await _customer(api, creator["secret_key"]))["id"]

    response = await api.http.post(
        f"/v1/customers/{customer}/payment_methods",
        headers=bearer(creator["publishable_key"]),
        json={"token": "tok_visa"},
    )

    assert (response.status_code, response.json()["type"]) == (
        403,
        PROBLEMS + "publishable-key-not-allowed",
    )
