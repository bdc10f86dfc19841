"""The store index and the hosted checkout page, through the ASGI app."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from stallholder.app import create_app
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.payments.gateway import SandboxGateway
from stallholder.settings import Settings
from tests.conftest import Api, bearer

pytestmark = pytest.mark.anyio


def csrf_token(page: str) -> str:
    """The CSRF token a page's form carries (the client's cookie holds its session)."""
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


async def test_index_has_an_empty_state(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert "No listed creators yet." in response.text


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
    form = {
        "client_secret": secret_match.group(1),
        "customer_email": "reader@example.com",
        "csrf_token": csrf_token(page.text),
    }

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
    assert (paid.status_code, paid.headers["location"]) == (303, page_url)
    done = await api.http.get(page_url)
    assert "Thank you" in done.text
    assert "PAPER-LANTERN-ZINES-000001" in done.text
    assert 'We sent the receipt to <strong id="receipt-email">reader@example.com</strong>' in (
        done.text
    )


async def _open_page(api: Api) -> tuple[str, str, dict[str, str]]:
    """(the creator's secret key, the hosted page's URL, the page form's fields)."""
    creator, price = await api.shop(unit_amount=600)
    opened = await api.http.get(f"/buy/{price['id']}")
    page_url = opened.headers["location"]
    page = await api.http.get(page_url)
    secret_match = re.search(r'name="client_secret" value="([^"]+)"', page.text)
    assert secret_match is not None
    form = {
        "client_secret": secret_match.group(1),
        "payment_method": "tok_visa",
        "csrf_token": csrf_token(page.text),
    }
    return creator["secret_key"], page_url, form


async def _session_as_the_creator_sees_it(api: Api, secret: str, page_url: str) -> Any:
    session_id = page_url.rsplit("/", 1)[1]
    response = await api.http.get(f"/v1/checkout/sessions/{session_id}", headers=bearer(secret))
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    "email", ["not-an-email", "a@b@example.com", "buyer\r\nBcc: x@example.com", "a\tb@example.com"]
)
async def test_the_page_refuses_an_address_the_api_refuses_and_sells_nothing(
    api: Api, email: str
) -> None:
    secret, page_url, form = await _open_page(api)

    response = await api.http.post(f"{page_url}/pay", data={**form, "customer_email": email})

    assert response.status_code == 422
    assert "customer email: not an email address" in response.text
    session = await _session_as_the_creator_sees_it(api, secret, page_url)
    assert (session["status"], session["customer_email"], session["order"]) == ("open", None, None)
    orders = await api.http.get("/v1/orders", headers=bearer(secret))
    assert orders.json()["data"] == []


async def test_the_page_stores_the_address_as_the_api_does(api: Api) -> None:
    secret, page_url, form = await _open_page(api)

    paid = await api.http.post(
        f"{page_url}/pay", data={**form, "customer_email": "Reader@Example.COM"}
    )

    assert paid.status_code == 303
    session = await _session_as_the_creator_sees_it(api, secret, page_url)
    assert (session["status"], session["customer_email"]) == ("complete", "Reader@example.com")


class _NeedsConnectedAccounts(SandboxGateway):
    """A gateway that only charges creators with a connected account: the confirm fails
    with a DomainError after it has already set the session's email."""

    needs_connected_account = True


async def test_a_page_that_fails_part_way_commits_nothing(
    settings: Settings, database: Database, clock: FrozenClock
) -> None:
    app = create_app(
        settings,
        database=database,
        clock=clock,
        gateway=_NeedsConnectedAccounts(),
        run_worker=False,
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        api = Api(http)
        secret, page_url, form = await _open_page(api)

        failed = await http.post(
            f"{page_url}/pay", data={**form, "customer_email": "reader@example.com"}
        )

        assert failed.status_code == 409
        assert "cannot take payments through sandbox yet" in failed.text
        session = await _session_as_the_creator_sees_it(api, secret, page_url)
        assert (session["status"], session["customer_email"]) == ("open", None)
