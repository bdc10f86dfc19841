"""The buyer portal and the creator dashboard in a real browser: sign in with a magic link
taken from a real SMTP server, cancel a subscription in two clicks (receipt on screen and
by email), create a product in the dashboard and see its order."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.browser.conftest import Server, Shots, wait_for_mail
from tests.browser.test_checkout import UNLABELLED
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.browser


def _link_in(received: Any, base_url: str, path: str) -> str:
    body = received.message.get_body(preferencelist=("plain",))
    assert body is not None
    [link] = re.findall(rf"{re.escape(base_url)}{path}/\S+", body.get_content())
    return str(link)


def _sign_in(page: Any, server: Server, smtp: SmtpServer, *, face: str, email: str) -> None:
    """Ask for a link on ``/<face>/sign-in``, open the one the server mailed, press Sign in."""
    page.goto(f"{server.base_url}/{face}/sign-in")
    page.get_by_label("Email").fill(email)
    page.get_by_role("button", name="Email me a sign-in link").click()
    subject = "dashboard" if face == "dashboard" else "sign-in link"
    link = _link_in(
        wait_for_mail(smtp, to=email, subject_contains=subject),
        server.base_url,
        f"/{face}/sign-in",
    )
    page.goto(link)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{server.base_url}/{face}")


def test_a_buyer_cancels_in_two_clicks_from_the_portal(
    server: Server, smtp: SmtpServer, page: Any, shots: Shots
) -> None:
    creator = server.shop()
    key = creator["secret_key"]
    price = server.offer(
        key,
        name="Zine club",
        unit_amount=300,
        currency="usd",
        recurring={"interval": "month", "interval_count": 1},
    )
    customer = server.api(
        "POST", "/v1/customers", key, json={"email": "reader@example.com", "country": "US"}
    )
    card = server.api(
        "POST", f"/v1/customers/{customer['id']}/payment_methods", key, json={"token": "tok_visa"}
    )
    subscription = server.api(
        "POST",
        "/v1/subscriptions",
        key,
        json={
            "customer": customer["id"],
            "items": [{"price": price, "quantity": 1}],
            "default_payment_method": card["id"],
        },
    )
    page.set_viewport_size({"width": 375, "height": 800})

    _sign_in(page, server, smtp, face="portal", email="reader@example.com")
    assert page.get_by_text("Zine club").first.is_visible()
    assert page.evaluate(UNLABELLED) == []
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    shots(page, "portal")

    page.locator(f"#cancel-{subscription['id']}").click()  # click 1: the confirmation page
    shots(page, "confirm-cancel")
    page.locator("#confirm-cancel").click()  # click 2: cancelled
    page.wait_for_url(re.compile(rf"/portal/subscriptions/{subscription['id']}/canceled$"))
    assert page.locator("#cancellation-receipt").is_visible()
    shots(page, "canceled")

    mail = wait_for_mail(smtp, to="reader@example.com", subject_contains="canceled")
    text = mail.message.get_body(preferencelist=("plain",))
    assert text is not None
    assert f"Reference: {subscription['id']}" in text.get_content()
    after = server.api("GET", f"/v1/subscriptions/{subscription['id']}", key)
    assert after["cancel_at_period_end"] is True


def test_a_creator_adds_a_product_in_the_dashboard_and_sees_its_order(
    server: Server, smtp: SmtpServer, page: Any, shots: Shots
) -> None:
    creator = server.shop()
    key = creator["secret_key"]

    _sign_in(page, server, smtp, face="dashboard", email="hi@example.com")
    page.goto(f"{server.base_url}/dashboard/products")
    page.get_by_label("Name").fill("Risograph print")
    page.get_by_label("Price").fill("12.50")
    page.get_by_label("Publish now (shown in the store and buyable)").check()
    page.get_by_role("button", name="Create product").click()
    assert page.locator("#product-created").is_visible()
    assert page.evaluate(UNLABELLED) == []
    shots(page, "product-created")

    [price] = server.api("GET", "/v1/prices", key)["data"]
    assert (price["unit_amount"], price["currency"]) == (1250, "usd")
    session = server.api(
        "POST",
        "/v1/checkout/sessions",
        key,
        json={
            "line_items": [{"price": price["id"], "quantity": 1}],
            "customer_email": "buyer@example.com",
        },
    )
    paid = server.api(
        "POST",
        f"/v1/checkout/sessions/{session['id']}/confirm",
        key,
        json={"payment_method": "tok_visa"},
    )

    page.goto(f"{server.base_url}/dashboard/orders")
    page.locator(f'a[href="/dashboard/orders/{paid["order"]}"]').click()
    assert page.locator("#order-status").inner_text() == "paid"
    assert page.get_by_text("Risograph print").first.is_visible()
    shots(page, "order")
