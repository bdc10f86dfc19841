"""The hosted checkout (/pay) and the embeddable checkout through the ASGI app: framing,
CORS and allowed origins, pay-what-you-want, expired sessions, CSRF, and the Stripe
Payment Element with its next_action. The browser runs of the same flows are in
tests/browser."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from stallholder.app import create_app
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.payments.stripe_gateway import StripeGateway
from stallholder.settings import Settings
from stallholder.web.security import PAGE_POLICY
from tests.conftest import ADMIN_KEY, Api, bearer
from tests.doubles.stripe_api import StripeDouble
from tests.e2e.test_pages import csrf_token

pytestmark = pytest.mark.anyio

PROBLEMS = "https://stallholder.dev/problems/"
SITE = "https://zines.example"


@pytest.fixture
def database_url(any_database_url: str) -> str:
    """On SQLite and PostgreSQL: ``allowed_origins`` is a JSON column on both."""
    return any_database_url


def _field(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found is not None, name
    return found.group(1)


async def _page(api: Api, price: str, query: str = "") -> tuple[str, httpx.Response]:
    opened = await api.http.get(f"/buy/{price}")
    assert opened.status_code == 303
    url = opened.headers["location"]
    return url, await api.http.get(url + query)


async def test_the_old_checkout_address_redirects_to_pay(api: Api) -> None:
    _, price = await api.shop()
    url, _ = await _page(api, price["id"])

    moved = await api.http.get(url.replace("/pay/", "/checkout/") + "?embed=1")

    assert (moved.status_code, moved.headers["location"]) == (301, f"{url}?embed=1")


async def test_the_page_is_never_framed_unless_embedded_by_an_allowed_origin(api: Api) -> None:
    creator, price = await api.shop()
    url, page = await _page(api, price["id"])
    assert page.headers["content-security-policy"] == f"{PAGE_POLICY}; frame-ancestors 'none'"
    assert 'id="back-to-store"' in page.text

    refused = await api.http.get(f"{url}?embed=1&origin={SITE}")
    assert refused.status_code == 403
    assert refused.headers["content-security-policy"] == f"{PAGE_POLICY}; frame-ancestors 'none'"
    assert f"has not allowed checkout to be embedded on {SITE}" in refused.text

    patched = await api.http.patch(
        f"/v1/creators/{creator['id']}",
        headers=bearer(creator["secret_key"]),
        json={"allowed_origins": ["HTTPS://Zines.Example:443/", "http://127.0.0.1:8080"]},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["allowed_origins"] == ["http://127.0.0.1:8080", SITE]

    embedded = await api.http.get(f"{url}?embed=1&origin={SITE}")
    assert embedded.status_code == 200
    assert (
        embedded.headers["content-security-policy"]
        == f"{PAGE_POLICY}; frame-ancestors 'self' {SITE}"
    )
    assert f'data-embed-origin="{SITE}"' in embedded.text
    assert "data-close" in embedded.text
    assert 'id="back-to-store"' not in embedded.text
    # The form keeps the embedded mode, so the next page may be framed too.
    assert f'action="{url}/pay?embed=1&amp;origin=https%3A%2F%2Fzines.example"' in embedded.text


@pytest.mark.parametrize(
    ("origin", "message"),
    [
        ("zines.example", "is not an origin; write it as https://shop.example"),
        ("https://zines.example/shop", "leave out the path, query and fragment"),
        ("ftp://zines.example", "is not an origin"),
    ],
)
async def test_allowed_origins_must_be_origins(api: Api, origin: str, message: str) -> None:
    creator, _ = await api.shop()
    response = await api.http.patch(
        f"/v1/creators/{creator['id']}",
        headers=bearer(creator["secret_key"]),
        json={"allowed_origins": [origin]},
    )
    assert response.status_code == 422
    assert message in response.json()["detail"]


async def test_a_creator_cannot_set_another_creators_origins(api: Api) -> None:
    first, _ = await api.shop()
    other = await api.creator(name="Other", email="other@example.com")
    response = await api.http.patch(
        f"/v1/creators/{first['id']}",
        headers=bearer(other["secret_key"]),
        json={"allowed_origins": [SITE]},
    )
    assert response.status_code == 404
    admin = await api.http.patch(
        f"/v1/creators/{first['id']}", headers=bearer(ADMIN_KEY), json={"allowed_origins": []}
    )
    assert (admin.status_code, admin.json()["allowed_origins"]) == (200, [])


async def test_cors_lets_an_allowed_site_open_a_session_with_the_publishable_key(api: Api) -> None:
    creator, price = await api.shop()
    preflight = await api.http.options(
        "/v1/checkout/sessions",
        headers={
            "Origin": SITE,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == SITE
    assert preflight.headers["access-control-allow-methods"] == "GET, POST"
    assert preflight.headers["access-control-allow-headers"] == (
        "Authorization, Content-Type, Idempotency-Key"
    )
    body = {"line_items": [{"price": price["id"]}]}
    headers = {**bearer(creator["publishable_key"]), "Origin": SITE}

    refused = await api.http.post("/v1/checkout/sessions", headers=headers, json=body)
    assert refused.status_code == 403
    assert refused.json()["type"] == PROBLEMS + "origin-not-allowed"
    assert refused.headers["access-control-allow-origin"] == SITE  # so the page can read why

    await api.http.patch(
        f"/v1/creators/{creator['id']}",
        headers=bearer(creator["secret_key"]),
        json={"allowed_origins": [SITE]},
    )
    created = await api.http.post("/v1/checkout/sessions", headers=headers, json=body)
    assert created.status_code == 201, created.text
    assert created.headers["access-control-allow-origin"] == SITE
    assert created.headers["vary"] == "Origin"
    assert created.json()["url"] == f"http://testserver/pay/{created.json()['id']}"

    # The platform's own pages, and servers (no Origin), need no listing.
    own = await api.http.post(
        "/v1/checkout/sessions",
        headers={**bearer(creator["publishable_key"]), "Origin": "http://testserver"},
        json=body,
    )
    assert own.status_code == 201
    # Routes that are not the browser's get no CORS headers.
    products = await api.http.get(
        "/v1/products", headers={**bearer(creator["secret_key"]), "Origin": SITE}
    )
    assert "access-control-allow-origin" not in products.headers


async def test_embed_js_is_served_small_and_without_dependencies(client: httpx.AsyncClient) -> None:
    response = await client.get("/embed.js")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert len(response.content) < 6_000
    assert "import " not in response.text
    assert "event.origin !== base" in response.text
    link_visit = await client.get("/l/plink_missing?embed=1&origin=https://zines.example")
    assert link_visit.status_code == 404


async def test_a_checkout_link_opens_the_embedded_page(api: Api) -> None:
    creator, price = await api.shop()
    link = await api.http.post(
        "/v1/checkout/links",
        headers=bearer(creator["secret_key"]),
        json={"line_items": [{"price": price["id"]}]},
    )
    visit = await api.http.get(f"/l/{link.json()['id']}?embed=1&origin={SITE}")
    assert visit.status_code == 303
    assert re.fullmatch(
        r"http://testserver/pay/cs_\w+\?embed=1&origin=https%3A%2F%2Fzines.example",
        visit.headers["location"],
    )


async def test_pay_what_you_want_on_the_page_and_in_the_api(api: Api) -> None:
    creator = await api.creator()
    product = await api.product(creator["secret_key"], kind="digital", name="Tip jar zine")
    price = await api.price(
        creator["secret_key"],
        product=product["id"],
        unit_amount=None,
        custom_unit_amount={"minimum": 300, "maximum": 5000, "preset": 500},
    )
    url, page = await _page(api, price["id"])
    assert 'name="amount" inputmode="decimal" required value="5.00"' in page.text
    assert "At least $3.00, at most $50.00." in page.text
    form = {
        "client_secret": _field(page.text, "client_secret"),
        "csrf_token": csrf_token(page.text),
        "customer_email": "fan@example.com",
        "payment_method": "tok_visa",
    }

    too_little = await api.http.post(f"{url}/pay", data={**form, "amount": "2.50"})
    assert too_little.status_code == 400
    assert 'id="amount-error" role="alert">line_items[0]: amount 250 is outside 300–5000' in (
        too_little.text
    )
    assert 'value="2.50"' in too_little.text  # what the buyer typed stays
    not_a_number = await api.http.post(f"{url}/pay", data={**form, "amount": "five"})
    assert not_a_number.status_code == 422
    assert "&#39;five&#39; is not an amount; write it as 5 or 5.50" in not_a_number.text

    paid = await api.http.post(f"{url}/pay", data={**form, "amount": "12.34"})
    assert paid.status_code == 303
    session_id = url.rsplit("/", 1)[1]
    session = (
        await api.http.get(
            f"/v1/checkout/sessions/{session_id}", headers=bearer(creator["secret_key"])
        )
    ).json()
    assert (session["status"], session["amount_total"]) == ("complete", 1234)

    # The API takes the same amount, checked the same way.
    opened = await api.http.post(
        "/v1/checkout/sessions",
        headers=bearer(creator["secret_key"]),
        json={"line_items": [{"price": price["id"]}]},
    )
    update = f"/v1/checkout/sessions/{opened.json()['id']}"
    low = await api.http.post(update, headers=bearer(creator["secret_key"]), json={"amount": 250})
    assert (low.status_code, low.json()["type"]) == (400, PROBLEMS + "invalid-line-item")
    chosen = await api.http.post(
        update, headers=bearer(creator["secret_key"]), json={"amount": 700}
    )
    assert chosen.status_code == 200, chosen.text
    assert (chosen.json()["amount_total"], chosen.json()["line_items"][0]["unit_amount"]) == (
        700,
        700,
    )
    empty = await api.http.post(update, headers=bearer(creator["secret_key"]), json={})
    assert empty.status_code == 422
    assert "send shipping_address, amount or both" in empty.json()["detail"]


async def test_a_fixed_price_session_takes_no_amount(api: Api) -> None:
    creator, price = await api.shop()
    opened = await api.session(creator["secret_key"], price=price["id"])
    response = await api.http.post(
        f"/v1/checkout/sessions/{opened['id']}",
        headers=bearer(creator["secret_key"]),
        json={"amount": 700},
    )
    assert response.status_code == 422
    assert response.json()["type"] == PROBLEMS + "not-pay-what-you-want"


async def test_an_expired_session_links_back_to_the_store(api: Api, clock: FrozenClock) -> None:
    creator, price = await api.shop()
    url, _ = await _page(api, price["id"])
    clock.advance(timedelta(hours=2))

    page = await api.http.get(url)

    assert page.status_code == 200
    assert "This checkout is no longer open" in page.text
    assert "This checkout expired or was cancelled, so nothing was charged." in page.text
    assert f'href="/s/{creator["slug"]}"' in page.text
    assert 'id="pay-form"' not in page.text


async def test_a_form_without_the_csrf_token_is_refused(api: Api) -> None:
    _, price = await api.shop()
    url, page = await _page(api, price["id"])
    form = {
        "client_secret": _field(page.text, "client_secret"),
        "customer_email": "reader@example.com",
        "payment_method": "tok_visa",
    }
    refused = await api.http.post(f"{url}/pay", data=form)
    assert refused.status_code == 403
    assert "without this browser&#39;s security token" in refused.text
    paid = await api.http.post(f"{url}/pay", data={**form, "csrf_token": csrf_token(page.text)})
    assert paid.status_code == 303


@pytest.fixture
async def stripe_client(
    settings: Settings, database: Database, clock: FrozenClock, stripe_gateway: StripeGateway
) -> AsyncIterator[httpx.AsyncClient]:
    stripe_settings = settings.model_copy(update={"stripe_publishable_key": "pk_test_platform"})
    app = create_app(
        stripe_settings, database=database, clock=clock, gateway=stripe_gateway, run_worker=False
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def test_with_stripe_the_page_mounts_the_payment_element_and_runs_next_action(
    stripe_client: httpx.AsyncClient, stripe_double: StripeDouble
) -> None:
    api = Api(stripe_client)
    creator, price = await api.shop(unit_amount=1500)
    connected = await stripe_client.post(
        f"/v1/creators/{creator['id']}/stripe_account", headers=bearer(ADMIN_KEY)
    )
    stripe_double.activate_account(connected.json()["account"])
    url, page = await _page(api, price["id"])
    assert '<script src="https://js.stripe.com/v3/"></script>' in page.text
    assert 'data-stripe-key="pk_test_platform" data-amount="1500" data-currency="usd"' in page.text
    assert 'id="payment-element"' in page.text
    assert "tok_visa" not in page.text  # no sandbox picker for a Stripe platform
    form: dict[str, Any] = {
        "client_secret": _field(page.text, "client_secret"),
        "csrf_token": csrf_token(page.text),
        "customer_email": "reader@example.com",
        # What the page's script puts here from stripe.createPaymentMethod.
        "payment_method": "pm_card_authenticationRequired",
    }

    pending = await stripe_client.post(f"{url}/pay", data=form)

    assert pending.status_code == 200, pending.text
    [intent] = stripe_double.of_type("payment_intent")
    assert f'data-action-secret="{intent["client_secret"]}"' in pending.text
    assert 'name="payment_method" value="pm_card_authenticationRequired"' in pending.text
    stripe_double.authenticate(intent["id"])  # what handleNextAction does in the browser
    done = await stripe_client.post(f"{url}/pay", data=form)
    assert (done.status_code, done.headers["location"]) == (303, url)
    final = await stripe_client.get(url)
    assert "Thank you" in final.text
    assert "js.stripe.com" not in final.text
    assert len(stripe_double.of_type("payment_intent")) == 1


async def test_the_demo_embed_page_sells_with_one_script_tag(client: httpx.AsyncClient) -> None:
    empty = await client.get("/demo/embed")
    assert "Open this page with <code>?key=pk_…&amp;price=price_…</code>" in empty.text
    page = await client.get("/demo/embed?key=pk_demo&price=price_demo")
    assert page.status_code == 200
    assert '<script src="/embed.js" data-publishable-key="pk_demo"></script>' in page.text
    assert '<button type="button" data-stallholder-price="price_demo" id="embed-buy">' in page.text


async def test_a_buyer_who_does_not_approve_3d_secure_can_pay_with_another_card(
    api: Api,
) -> None:
    creator, price = await api.shop(unit_amount=1800)
    url, page = await _page(api, price["id"])
    form = {
        "client_secret": _field(page.text, "client_secret"),
        "csrf_token": csrf_token(page.text),
        "customer_email": "careful@example.com",
        "payment_method": "tok_authenticationRequired",
    }

    challenged = await api.http.post(f"{url}/pay", data=form)
    assert (challenged.status_code, challenged.headers["location"]) == (303, f"{url}/authenticate")
    challenge = await api.http.get(f"{url}/authenticate")
    assert "Paper Lantern Zines asks to charge <strong>$18.00</strong> to your card." in (
        challenge.text
    )
    assert 'name="payment_method" value="tok_visa_3ds_confirmed"' in challenge.text
    assert challenge.headers["content-security-policy"] == f"{PAGE_POLICY}; frame-ancestors 'none'"

    back = await api.http.get(url)  # "Do not approve"
    assert f'<a href="{url}/authenticate">Confirm it now</a>, or pay with another card' in (
        back.text
    )
    paid = await api.http.post(f"{url}/pay", data={**form, "payment_method": "tok_visa"})
    assert (paid.status_code, paid.headers["location"]) == (303, url)
    session_id = url.rsplit("/", 1)[1]
    session = (
        await api.http.get(
            f"/v1/checkout/sessions/{session_id}", headers=bearer(creator["secret_key"])
        )
    ).json()
    assert (session["status"], session["amount_total"]) == ("complete", 1800)
    # Once paid, the challenge page only leads back to the receipt.
    after = await api.http.get(f"{url}/authenticate")
    assert (after.status_code, after.headers["location"]) == (303, url)


async def test_the_page_shows_the_products_image(api: Api) -> None:
    creator = await api.creator()
    product = await api.product(
        creator["secret_key"], kind="digital", name="Poster", images=["https://cdn.example/p.png"]
    )
    assert product["images"] == ["https://cdn.example/p.png"]
    price = await api.price(creator["secret_key"], product=product["id"], unit_amount=900)
    _, page = await _page(api, price["id"])
    assert '<img class="thumb" src="https://cdn.example/p.png" alt="" width="48"' in page.text
    assert page.headers["referrer-policy"] == "same-origin"  # the session id stays here

    bad = await api.http.patch(
        f"/v1/products/{product['id']}",
        headers=bearer(creator["secret_key"]),
        json={"images": ["javascript:alert(1)"]},
    )
    assert bad.status_code == 422
    cleared = await api.http.patch(
        f"/v1/products/{product['id']}", headers=bearer(creator["secret_key"]), json={"images": []}
    )
    assert cleared.json()["images"] == []
