"""The store index and the hosted checkout page, through the ASGI app."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import Api

pytestmark = pytest.mark.anyio


async def test_index_has_an_empty_state(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert "No creators yet." in response.text


async def test_buy_on_the_hosted_page_declined_then_paid(api: Api) -> None:
    creator, price = await api.shop(unit_amount=600)
    index = await api.http.get("/")
    assert creator["display_name"] in index.text
    assert f'href="/buy/{price["id"]}"' in index.text

    opened = await api.http.get(f"/buy/{price['id']}")
    assert opened.status_code == 303
    page_url = opened.headers["location"]
    page = await api.http.get(page_url)
    assert page.status_code == 200
    assert "$6.00" in page.text
    secret_match = re.search(r'name="client_secret" value="([^"]+)"', page.text)
    assert secret_match is not None
    form = {"client_secret": secret_match.group(1), "customer_email": "reader@example.com"}

    declined = await api.http.post(
        f"{page_url}/pay", data={**form, "payment_method": "tok_chargeDeclined"}
    )
    assert declined.status_code == 402
    assert "The card was declined." in declined.text

    wrong_secret = await api.http.post(
        f"{page_url}/pay", data={**form, "client_secret": "nope", "payment_method": "tok_visa"}
    )
    assert wrong_secret.status_code == 404

    paid = await api.http.post(f"{page_url}/pay", data={**form, "payment_method": "tok_visa"})
    assert paid.status_code == 200
    assert "Thank you" in paid.text
    assert "PAPER-LANTERN-ZINES-000001" in paid.text
