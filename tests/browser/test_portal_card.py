"""The portal's "Add a new card" with the Stripe gateway in a real browser: the card is
saved through a SetupIntent that Stripe.js confirms on the page, with the bank's 3-D
Secure check for a card that asks for it (Stripe's test card 4000 0027 6000 3184).

The server runs against the Stripe API double; the page loads ``https://js.stripe.com/v3/``
and gets the Stripe.js double (tests/doubles/stripe_js.py), as in test_stripe_checkout.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.browser.conftest import Server, Shots
from tests.browser.test_portal_and_dashboard import _sign_in
from tests.browser.test_stripe_checkout import calls, stripe_subscriber
from tests.doubles import stripe_js
from tests.doubles.stripe_api import StripeDouble
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.browser

THREE_D_SECURE_CARD = "4000 0027 6000 3184"


def _open_payment_page(
    server: Server, double: StripeDouble, smtp: SmtpServer, page: Any, subscription: str
) -> None:
    stripe_js.install(page, double)
    _sign_in(page, server, smtp, face="portal", email="reader@example.com")
    page.goto(f"{server.base_url}/portal/subscriptions/{subscription}/payment-method")
    page.wait_for_selector("#payment-element[data-stripe-double=mounted]")


def _add_card(page: Any, number: str) -> None:
    page.get_by_label("Card number").fill(number)
    page.get_by_role("button", name="Save card").click()


def test_a_card_that_needs_3ds_is_confirmed_on_the_page_and_becomes_the_default(
    stripe_server: Server, stripe_double: StripeDouble, smtp: SmtpServer, page: Any, shots: Shots
) -> None:
    subscriber = stripe_subscriber(stripe_server, stripe_double)
    _open_payment_page(stripe_server, stripe_double, smtp, page, subscriber["id"])

    _add_card(page, THREE_D_SECURE_CARD)
    challenge = page.get_by_role("dialog", name="3D Secure test payment page")
    challenge.wait_for()
    assert page.locator("#needs-action").inner_text() == (
        "Your bank may ask you to confirm this card (3-D Secure). If a window from your bank "
        "opens, approve the card there."
    )
    [intent] = stripe_double.of_type("setup_intent")
    [customer_at_stripe] = stripe_double.of_type("customer")
    assert (intent["status"], intent["usage"], intent["customer"]) == (
        "requires_action",
        "off_session",
        customer_at_stripe["id"],
    )
    confirming = [made for made in calls(page) if made["call"] == "confirmCardSetup"]
    assert confirming == [
        {
            "call": "confirmCardSetup",
            "clientSecret": intent["client_secret"],
            "data": {"payment_method": intent["payment_method"]},
        }
    ]
    # Not saved while the bank's check is open.
    after = stripe_server.api("GET", f"/v1/subscriptions/{subscriber['id']}", subscriber["key"])
    assert after["default_payment_method"] == subscriber["card"]
    shots(page, "challenge")

    page.get_by_role("button", name="Complete").click()
    page.wait_for_url(re.compile(r"/portal(#.*)?$"))
    assert page.get_by_text("Card updated: your next payments will be charged to it.").is_visible()
    shots(page, "updated")

    [intent] = stripe_double.of_type("setup_intent")
    assert intent["status"] == "succeeded"
    assert stripe_double.objects[intent["payment_method"]]["customer"] == customer_at_stripe["id"]
    after = stripe_server.api("GET", f"/v1/subscriptions/{subscriber['id']}", subscriber["key"])
    saved = stripe_server.api(
        "GET", f"/v1/customers/{subscriber['customer']}/payment_methods", subscriber["key"]
    )
    by_id = {method["id"]: method for method in saved["data"]}
    new_card = by_id[after["default_payment_method"]]
    assert new_card["id"] != subscriber["card"]
    assert (new_card["gateway"], new_card["chargeable"]) == ("stripe", True)
    attached = [
        method["id"]
        for method in stripe_double.of_type("payment_method")
        if method["customer"] == customer_at_stripe["id"] and method["card"]["last4"] == "3184"
    ]
    assert attached == [intent["payment_method"]]
    assert len(stripe_double.requests_to("POST", "/v1/setup_intents")) == 1

    # The payment page shows the new card as the one in use.
    page.goto(f"{stripe_server.base_url}/portal/subscriptions/{subscriber['id']}/payment-method")
    current = page.locator("#saved-card-form input[name=payment_method]:checked")
    assert current.get_attribute("value") == new_card["id"]
    assert (
        page.locator("#saved-card-form label:has(input:checked)")
        .inner_text()
        .endswith(" — in use now")
    )


@pytest.mark.parametrize("answer", ["fail", "close"])
def test_a_failed_or_abandoned_3ds_check_saves_nothing(
    stripe_server: Server,
    stripe_double: StripeDouble,
    smtp: SmtpServer,
    page: Any,
    shots: Shots,
    answer: str,
) -> None:
    subscriber = stripe_subscriber(stripe_server, stripe_double)
    _open_payment_page(stripe_server, stripe_double, smtp, page, subscriber["id"])

    _add_card(page, THREE_D_SECURE_CARD)
    page.get_by_role("dialog", name="3D Secure test payment page").wait_for()
    if answer == "fail":
        page.get_by_role("button", name="Fail").click()
    else:
        page.keyboard.press("Escape")
    error = page.locator("#card-error:not(:empty)")
    error.wait_for()
    assert error.inner_text() == (
        "Your bank did not confirm this card. Try again, or use another card."
    )
    assert page.locator("#needs-action").count() == 0
    # A fresh Payment Element for another card.
    page.wait_for_selector("#payment-element[data-stripe-double=mounted]")
    assert page.get_by_role("button", name="Save card").is_enabled()
    shots(page, f"authentication-{answer}")

    [intent] = stripe_double.of_type("setup_intent")
    assert (intent["status"], intent["last_setup_error"]["code"]) == (
        "requires_payment_method",
        "setup_intent_authentication_failure",
    )
    after = stripe_server.api("GET", f"/v1/subscriptions/{subscriber['id']}", subscriber["key"])
    assert after["default_payment_method"] == subscriber["card"]
    saved = stripe_server.api(
        "GET", f"/v1/customers/{subscriber['customer']}/payment_methods", subscriber["key"]
    )
    assert [method["id"] for method in saved["data"]] == [subscriber["card"]]

    # Another card then saves.
    _add_card(page, "4242 4242 4242 4242")
    page.wait_for_url(re.compile(r"/portal(#.*)?$"))
    after = stripe_server.api("GET", f"/v1/subscriptions/{subscriber['id']}", subscriber["key"])
    assert after["default_payment_method"] != subscriber["card"]


def test_a_double_click_makes_one_setup_intent(
    stripe_server: Server, stripe_double: StripeDouble, smtp: SmtpServer, page: Any
) -> None:
    subscriber = stripe_subscriber(stripe_server, stripe_double)
    _open_payment_page(stripe_server, stripe_double, smtp, page, subscriber["id"])

    page.get_by_label("Card number").fill("4242 4242 4242 4242")
    page.get_by_role("button", name="Save card").dblclick()
    page.wait_for_url(re.compile(r"/portal(#.*)?$"))

    # The card typed (one PaymentMethod at the double besides the saved Visa's).
    assert len(stripe_double.of_type("setup_intent")) == 1
    assert len(stripe_double.requests_to("POST", "/v1/payment_methods")) == 1
    saved = stripe_server.api(
        "GET", f"/v1/customers/{subscriber['customer']}/payment_methods", subscriber["key"]
    )
    assert len(saved["data"]) == 2


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            "stripe.confirmCardSetup('pi_123_secret_456')",
            "Invalid value for confirmCardSetup intent secret: value should be a client_secret "
            "string. You specified: pi_123_secret_456.",
        ),
        (
            "stripe.confirmCardSetup('seti_123_secret_456', {payment_method: {card: {}}})",
            "The double confirms with an existing PaymentMethod id only (payment_method: "
            "'pm_...').",
        ),
        (
            "stripe.confirmCardSetup('seti_123_secret_456', {payment_method: 'pm_1'}, "
            "{handleActions: false})",
            "The double handles actions itself (handleActions: false is not supported).",
        ),
    ],
)
def test_the_stripe_js_double_refuses_a_wrong_confirm_card_setup(
    stripe_double: StripeDouble, page: Any, call: str, message: str
) -> None:
    """What Stripe.js throws for a wrong call, the double throws too, so a page that
    calls it wrongly fails its browser test."""
    stripe_js.install(page, stripe_double)
    page.set_content('<script src="https://js.stripe.com/v3/"></script>')
    thrown = page.evaluate(
        "() => { const stripe = Stripe('pk_test_double');"
        f" try {{ {call}; return null; }}"
        " catch (error) { return [error.name, error.message]; } }"
    )
    assert thrown == ["IntegrationError", message]
