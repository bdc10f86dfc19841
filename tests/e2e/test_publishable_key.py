"""A publishable key ships in web pages: it reads the public catalog and starts checkouts,
and sees nothing a buyer should not (drafts, archived prices, the creator's account)."""

from __future__ import annotations

import pytest

from tests.conftest import Api, bearer

pytestmark = pytest.mark.anyio


async def test_a_publishable_key_sees_only_buyable_prices_and_no_account_data(api: Api) -> None:
    creator = await api.creator()
    sk, pk = creator["secret_key"], creator["publishable_key"]
    published = await api.product(sk, name="Zine")
    draft = await api.product(sk, name="Next zine", status="draft")
    on_sale = await api.price(sk, product=published["id"])
    archived = await api.price(sk, product=published["id"], unit_amount=900)
    unreleased = await api.price(sk, product=draft["id"])
    archive = await api.http.patch(
        f"/v1/prices/{archived['id']}", headers=bearer(sk), json={"active": False}
    )
    assert archive.status_code == 200

    listed = await api.http.get("/v1/prices", headers=bearer(pk))
    assert [p["id"] for p in listed.json()["data"]] == [on_sale["id"]]
    for hidden in (archived, unreleased):
        response = await api.http.get(f"/v1/prices/{hidden['id']}", headers=bearer(pk))
        assert (response.status_code, response.json()["type"]) == (
            404,
            "https://stallholder.dev/problems/price-not-found",
        )
    secret_view = await api.http.get("/v1/prices", headers=bearer(sk))
    assert len(secret_view.json()["data"]) == 3

    own_account = await api.http.get(f"/v1/creators/{creator['id']}", headers=bearer(pk))
    assert own_account.status_code == 404
    assert (await api.http.get(f"/v1/creators/{creator['id']}", headers=bearer(sk))).json()[
        "id"
    ] == creator["id"]
