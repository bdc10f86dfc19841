"""The platform's list of creators (admin key) and a creator's list of refunds: who may
read them, cursor pagination, the ``order`` filter, and one creator never seeing
another's refunds."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, Api, bearer

pytestmark = pytest.mark.anyio

PROBLEMS = "https://stallholder.dev/problems/"


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


def problem(response: httpx.Response) -> tuple[int, str]:
    assert response.headers["content-type"] == "application/problem+json", response.text
    return response.status_code, response.json()["type"].removeprefix(PROBLEMS)


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["data"]]


async def paid_order(api: Api, key: str, price: str, *, quantity: int = 2) -> str:
    session = await api.session(key, price=price, quantity=quantity)
    paid = await api.confirm(key, session["id"])
    assert paid.status_code == 200, paid.text
    order: str = paid.json()["order"]
    return order


async def refund(api: Api, key: str, order: str, amount: int) -> dict[str, Any]:
    response = await api.http.post(
        "/v1/refunds", headers=bearer(key), json={"order": order, "amount": amount}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_the_admin_lists_every_creator_newest_first_a_page_at_a_time(api: Api) -> None:
    first = await api.creator(name="Paper Lantern Zines")
    second = await api.creator(name="Kiln & Clay", email="kiln@example.com")
    third = await api.creator(name="Ink Fox", email="fox@example.com")

    everyone = await api.http.get("/v1/creators", headers=bearer(ADMIN_KEY))
    assert ids(everyone) == [third["id"], second["id"], first["id"]]
    assert everyone.json()["object"] == "list"
    assert everyone.json()["has_more"] is False
    shown = everyone.json()["data"][0]
    assert shown == {
        "object": "creator",
        "id": third["id"],
        "slug": "ink-fox",
        "display_name": "Ink Fox",
        "email": "fox@example.com",
        "platform_fee_bps": None,
        "platform_fee_fixed": None,
        "allowed_origins": [],
        "listed": False,
        "created": third["created"],
    }

    page = await api.http.get("/v1/creators", headers=bearer(ADMIN_KEY), params={"limit": 2})
    assert (ids(page), page.json()["has_more"]) == ([third["id"], second["id"]], True)
    rest = await api.http.get(
        "/v1/creators",
        headers=bearer(ADMIN_KEY),
        params={"limit": 2, "starting_after": second["id"]},
    )
    assert (ids(rest), rest.json()["has_more"]) == ([first["id"]], False)

    unknown = await api.http.get(
        "/v1/creators", headers=bearer(ADMIN_KEY), params={"starting_after": "cr_nope"}
    )
    assert problem(unknown) == (400, "invalid-cursor")


async def test_only_the_admin_key_lists_creators(api: Api) -> None:
    creator = await api.creator()

    for key in (creator["secret_key"], creator["publishable_key"]):
        refused = await api.http.get("/v1/creators", headers=bearer(key))
        assert problem(refused) == (403, "admin-key-required")
    missing = await api.http.get("/v1/creators")
    assert problem(missing) == (401, "unauthenticated")
    assert missing.headers["www-authenticate"] == 'Bearer realm="stallholder"'


async def test_a_creator_lists_its_refunds_newest_first_and_filters_by_order(api: Api) -> None:
    creator, price = await api.shop()
    sk = creator["secret_key"]
    mugs = await paid_order(api, sk, price["id"])
    zines = await paid_order(api, sk, price["id"])
    first = await refund(api, sk, mugs, 500)
    second = await refund(api, sk, zines, 700)
    third = await refund(api, sk, mugs, 300)

    everything = await api.http.get("/v1/refunds", headers=bearer(sk))
    assert ids(everything) == [third["id"], second["id"], first["id"]]
    assert everything.json()["data"][1] == second
    assert second == {
        "object": "refund",
        "id": second["id"],
        "order": zines,
        "amount": 700,
        "currency": "usd",
        "restock": False,
        "reason": None,
        "status": "succeeded",
        "created": second["created"],
    }

    of_mugs = await api.http.get("/v1/refunds", headers=bearer(sk), params={"order": mugs})
    assert ids(of_mugs) == [third["id"], first["id"]]
    page = await api.http.get("/v1/refunds", headers=bearer(sk), params={"order": mugs, "limit": 1})
    assert (ids(page), page.json()["has_more"]) == ([third["id"]], True)
    rest = await api.http.get(
        "/v1/refunds",
        headers=bearer(sk),
        params={"order": mugs, "limit": 1, "starting_after": third["id"]},
    )
    assert (ids(rest), rest.json()["has_more"]) == ([first["id"]], False)
    # A cursor must be in the same filtered list.
    outside = await api.http.get(
        "/v1/refunds", headers=bearer(sk), params={"order": mugs, "starting_after": second["id"]}
    )
    assert problem(outside) == (400, "invalid-cursor")


async def test_a_creator_never_sees_another_creators_refunds(api: Api) -> None:
    creator, price = await api.shop()
    sk = creator["secret_key"]
    order = await paid_order(api, sk, price["id"])
    theirs = await refund(api, sk, order, 500)
    other = await api.creator(name="Kiln & Clay", email="kiln@example.com")
    other_sk = other["secret_key"]

    assert ids(await api.http.get("/v1/refunds", headers=bearer(other_sk))) == []
    by_order = await api.http.get("/v1/refunds", headers=bearer(other_sk), params={"order": order})
    assert problem(by_order) == (404, "order-not-found")
    by_cursor = await api.http.get(
        "/v1/refunds", headers=bearer(other_sk), params={"starting_after": theirs["id"]}
    )
    assert problem(by_cursor) == (400, "invalid-cursor")


async def test_refunds_need_the_creators_secret_key(api: Api) -> None:
    creator, _ = await api.shop()

    publishable = await api.http.get("/v1/refunds", headers=bearer(creator["publishable_key"]))
    assert problem(publishable) == (403, "publishable-key-not-allowed")
    admin = await api.http.get("/v1/refunds", headers=bearer(ADMIN_KEY))
    assert problem(admin) == (403, "creator-key-required")
    assert problem(await api.http.get("/v1/refunds")) == (401, "unauthenticated")
