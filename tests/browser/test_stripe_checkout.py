"""The hosted checkout with the Stripe gateway in a real browser: the Payment Element,
3-D Secure on the same page, and a decline shown inline.

The server runs ``STALLHOLDER_PAYMENT_GATEWAY=stripe`` against the Stripe API double; the
page loads ``https://js.stripe.com/v3/`` as in production and gets the Stripe.js double
(tests/doubles/stripe_js.py), which creates its payment methods at the API double. What
this does and does not prove: docs/checkout-pages.md, "Stripe".
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.browser.conftest import Server, Shots
from tests.browser.test_checkout import UNLABELLED
from tests.browser.test_portal_and_dashboard import _sign_in
from tests.conftest import ADMIN_KEY
from tests.doubles import stripe_js
from tests.doubles.stripe_api import StripeDouble
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.browser


def connected_shop(server: Server, double: StripeDouble) -> dict[str, Any]:
    """A listed creator whose Stripe account finished onboarding."""
    creator = server.shop()
    connected = server.api("POST", f"/v1/creators/{creator['id']}/stripe_account", ADMIN_KEY)
    double.activate_account(connected["account"])
    return creator


def stripe_subscriber(server: Server, double: StripeDouble) -> dict[str, Any]:
    """A monthly subscription of reader@example.com paid by a saved Visa; its ids."""
    creator = connected_shop(server, double)
    key = creator["secret_key"]
    price = server.offer(
        key, name="Zine club", unit_amount=300, currency="usd", recurring={"interval": "month"}
    )
    customer = server.api(
        "POST", "/v1/customers", key, json={"email": "reader@example.com", "country": "US"}
    )
    card = server.api(
        "POST",
        f"/v1/customers/{customer['id']}/payment_methods",
        key,
        json={"token": "pm_card_visa"},
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
    return {"key": key, "customer": customer["id"], "card": card["id"], "id": subscription["id"]}


def open_checkout(
    server: Server, double: StripeDouble, page: Any, *, unit_amount: int
) -> dict[str, Any]:
    """The checkout page of a new one-time price, with the Stripe.js double; the creator."""
    creator = connected_shop(server, double)
    price = server.offer(
        creator["secret_key"], name="Riso zine", unit_amount=unit_amount, currency="usd"
    )
    stripe_js.install(page, double)
    page.goto(f"{server.base_url}/buy/{price}")
    page.wait_for_url(re.compile(r"/pay/cs_"))
    page.wait_for_selector("#payment-element[data-stripe-double=mounted]")
    return creator


def pay_with(page: Any, *, email: str, card: str, button: str) -> None:
    page.get_by_label("Email for your receipt").fill(email)
    page.get_by_label("Card number").fill(card)
    page.get_by_role("button", name=button).click()


def shown_error(page: Any) -> str:
    """The payment error under the card, once there is one."""
    error = page.locator("#payment_method-error:not(:empty)")
    error.wait_for()
    text: str = error.inner_text()
    return text


def calls(page: Any) -> list[dict[str, Any]]:
    made: list[dict[str, Any]] = page.evaluate("window.StripeDouble.calls")
    return made


def session_of(server: Server, page: Any, creator_key: str) -> dict[str, Any]:
    session_id = page.locator("body").get_attribute("data-session")
    found: dict[str, Any] = server.api("GET", f"/v1/checkout/sessions/{session_id}", creator_key)
    return found


def test_pay_with_the_payment_element(
    stripe_server: Server, stripe_double: StripeDouble, page: Any, shots: Shots
) -> None:
    creator = open_checkout(stripe_server, stripe_double, page, unit_amount=1500)
    assert calls(page)[:2] == [
        {"call": "Stripe", "key": "pk_test_double"},
        {
            "call": "elements",
            "options": {
                "mode": "payment",
                "amount": 1500,
                "currency": "usd",
                "paymentMethodCreation": "manual",
            },
        },
    ]
    assert page.locator("#payment_method").count() == 0  # no sandbox picker
    assert page.evaluate(UNLABELLED) == []
    # Every <label for> names a form control (a <div> cannot be labelled that way).
    assert (
        page.evaluate(
            "Array.from(document.querySelectorAll('label[for]'))"
            ".filter(l => !l.control).map(l => l.htmlFor)"
        )
        == []
    )
    assert page.get_by_role("group", name="Card").count() == 1
    shots(page, "checkout")

    # Client-side validation first: nothing reaches the server.
    pay_with(page, email="reader@example.com", card="4242 4242 4242 4241", button="Pay $15.00")
    assert shown_error(page) == "Your card number is invalid."
    assert stripe_double.of_type("payment_method") == []

    page.get_by_label("Card number").fill("4242 4242 4242 4242")
    page.get_by_role("button", name="Pay $15.00").click()
    page.wait_for_selector("#success")
    assert page.locator("#success").inner_text() == (
        "Paid. Your receipt number is PAPER-LANTERN-000001. "
        "We sent the receipt to reader@example.com."
    )
    shots(page, "paid")

    [method] = stripe_double.of_type("payment_method")
    [intent] = stripe_double.of_type("payment_intent")
    assert (intent["status"], intent["amount"], intent["currency"], intent["payment_method"]) == (
        "succeeded",
        1500,
        "usd",
        method["id"],
    )
    assert method["card"]["last4"] == "4242"
    session = session_of(stripe_server, page, creator["secret_key"])
    assert (session["status"], session["payment_status"], session["amount_total"]) == (
        "complete",
        "paid",
        1500,
    )
    order = stripe_server.api("GET", f"/v1/orders/{session['order']}", creator["secret_key"])
    # The processor fee is the double's balance transaction's: 2.9% + 30 of 1500.
    assert (order["status"], order["amount_total"], order["currency"]) == ("paid", 1500, "usd")
    assert (order["processor_fee"], order["customer_email"]) == (74, "reader@example.com")
    assert len(stripe_double.requests_to("POST", "/v1/payment_intents")) == 1


def test_three_d_secure_runs_on_the_same_page(
    stripe_server: Server, stripe_double: StripeDouble, page: Any, shots: Shots
) -> None:
    creator = open_checkout(stripe_server, stripe_double, page, unit_amount=1800)
    pay_with(page, email="careful@example.com", card="4000002760003184", button="Pay $18.00")
    # The server answers with the PaymentIntent's secret; the page runs handleNextAction,
    # which opens the bank's challenge (the double's copy of Stripe's test page).
    challenge = page.get_by_role("dialog", name="3D Secure test payment page")
    challenge.wait_for()
    assert page.locator("#needs-action").is_visible()
    [intent] = stripe_double.of_type("payment_intent")
    assert intent["status"] == "requires_action"
    assert page.locator("#pay-form").get_attribute("data-action-secret") == intent["client_secret"]
    shots(page, "challenge")

    page.get_by_role("button", name="Complete").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#success")
    assert page.locator("#success").inner_text() == (
        "Paid. Your receipt number is PAPER-LANTERN-000001. "
        "We sent the receipt to careful@example.com."
    )
    shots(page, "paid")
    assert page.evaluate("typeof window.Stripe") == "undefined"  # no Stripe.js on success
    [intent] = stripe_double.of_type("payment_intent")
    assert (intent["status"], intent["amount"]) == ("succeeded", 1800)
    session = session_of(stripe_server, page, creator["secret_key"])
    assert (session["status"], session["payment_status"], session["amount_total"]) == (
        "complete",
        "paid",
        1800,
    )


def test_a_declined_card_is_shown_on_the_page_and_another_card_pays(
    stripe_server: Server, stripe_double: StripeDouble, page: Any, shots: Shots
) -> None:
    creator = open_checkout(stripe_server, stripe_double, page, unit_amount=600)
    pay_with(page, email="reader@example.com", card="4000 0000 0000 0002", button="Pay $6.00")
    assert shown_error(page) == "Your card was declined."
    assert page.get_by_label("Email for your receipt").input_value() == "reader@example.com"
    # The page mounted a fresh Payment Element for the next card.
    page.wait_for_selector("#payment-element[data-stripe-double=mounted]")
    assert page.get_by_label("Card number").input_value() == ""
    shots(page, "declined")
    [declined] = stripe_double.of_type("payment_intent")
    assert declined["status"] == "requires_payment_method"

    page.get_by_label("Card number").fill("4242424242424242")
    page.get_by_role("button", name="Pay $6.00").click()
    page.wait_for_selector("#success")
    session = session_of(stripe_server, page, creator["secret_key"])
    assert (session["status"], session["amount_total"]) == ("complete", 600)
    statuses = sorted(intent["status"] for intent in stripe_double.of_type("payment_intent"))
    assert statuses == ["requires_payment_method", "succeeded"]


def test_a_double_click_makes_one_payment_method_and_one_charge(
    stripe_server: Server, stripe_double: StripeDouble, page: Any
) -> None:
    creator = open_checkout(stripe_server, stripe_double, page, unit_amount=900)
    page.get_by_label("Email for your receipt").fill("hasty@example.com")
    page.get_by_label("Card number").fill("4242424242424242")
    page.get_by_role("button", name="Pay $9.00").dblclick()
    page.wait_for_selector("#success")
    assert len(stripe_double.of_type("payment_method")) == 1
    assert len(stripe_double.requests_to("POST", "/v1/payment_intents")) == 1
    session = session_of(stripe_server, page, creator["secret_key"])
    assert (session["status"], session["amount_total"]) == ("complete", 900)


def test_a_failed_three_d_secure_is_shown_and_another_card_pays(
    stripe_server: Server, stripe_double: StripeDouble, page: Any, shots: Shots
) -> None:
    creator = open_checkout(stripe_server, stripe_double, page, unit_amount=1800)
    pay_with(page, email="careful@example.com", card="4000002760003184", button="Pay $18.00")
    page.get_by_role("dialog", name="3D Secure test payment page").wait_for()
    page.get_by_role("button", name="Fail").click()
    # The page sends the form again and the server reads the PaymentIntent's outcome: the
    # buyer reads it in plain words (not Stripe's developer message), with a fresh Payment
    # Element for another card.
    assert shown_error(page) == (
        "Your bank did not confirm this payment. Try again, or use another card."
    )
    page.wait_for_selector("#payment-element[data-stripe-double=mounted]")
    assert page.locator("#needs-action").count() == 0
    assert page.locator("#pay-form").get_attribute("data-action-secret") is None
    shots(page, "authentication-failed")
    [failed] = stripe_double.of_type("payment_intent")
    assert failed["status"] == "requires_payment_method"

    page.get_by_label("Card number").fill("4242424242424242")
    page.get_by_role("button", name="Pay $18.00").click()
    page.wait_for_selector("#success")
    session = session_of(stripe_server, page, creator["secret_key"])
    assert (session["status"], session["amount_total"]) == ("complete", 1800)
    statuses = sorted(intent["status"] for intent in stripe_double.of_type("payment_intent"))
    assert statuses == ["requires_payment_method", "succeeded"]


def test_subscribe_with_the_payment_element(
    stripe_server: Server, stripe_double: StripeDouble, page: Any, shots: Shots
) -> None:
    creator = connected_shop(stripe_server, stripe_double)
    price = stripe_server.offer(
        creator["secret_key"],
        name="Zine of the month",
        unit_amount=300,
        currency="usd",
        recurring={"interval": "month"},
    )
    stripe_js.install(page, stripe_double)
    page.goto(f"{stripe_server.base_url}/buy/{price}")
    page.wait_for_selector("#payment-element[data-stripe-double=mounted]")
    assert calls(page)[1]["options"] == {
        "mode": "payment",
        "amount": 300,
        "currency": "usd",
        "paymentMethodCreation": "manual",
        "setupFutureUsage": "off_session",
    }
    page.get_by_label("Email for your receipt").fill("subscriber@example.com")
    page.get_by_label("Card number").fill("4242424242424242")
    page.get_by_label(re.compile("I agree to the renewal terms")).check()
    page.get_by_role("button", name="Subscribe").click()
    page.wait_for_selector("#success")
    shots(page, "subscribed")
    subscription = page.locator("body").get_attribute("data-subscription")
    assert subscription is not None
    found = stripe_server.api("GET", f"/v1/subscriptions/{subscription}", creator["secret_key"])
    assert found["status"] == "active"
    [method] = stripe_double.of_type("payment_method")
    [customer] = stripe_double.of_type("customer")
    [intent] = stripe_double.of_type("payment_intent")
    assert method["customer"] == customer["id"] == intent["customer"]
    assert (intent["status"], intent["amount"], intent["payment_method"]) == (
        "succeeded",
        300,
        method["id"],
    )


def test_a_buyer_adds_a_card_in_the_portal_with_the_payment_element(
    stripe_server: Server, stripe_double: StripeDouble, smtp: SmtpServer, page: Any, shots: Shots
) -> None:
    subscriber = stripe_subscriber(stripe_server, stripe_double)
    key = subscriber["key"]
    stripe_js.install(page, stripe_double)
    _sign_in(page, stripe_server, smtp, face="portal", email="reader@example.com")
    page.goto(f"{stripe_server.base_url}/portal/subscriptions/{subscriber['id']}/payment-method")
    page.wait_for_selector("#payment-element[data-stripe-double=mounted]")
    assert calls(page)[1]["options"] == {
        "mode": "setup",
        "currency": "usd",
        "paymentMethodCreation": "manual",
    }
    assert page.evaluate(UNLABELLED) == []
    shots(page, "payment-element")

    # A card Stripe refuses to save: the SetupIntent's confirmation is declined in the
    # browser, the page says so in plain words and nothing changes.
    page.get_by_label("Card number").fill("4000 0000 0000 0002")
    page.get_by_role("button", name="Save card").click()
    error = page.locator("#card-error:not(:empty)")
    error.wait_for()
    assert error.inner_text() == "Your card was declined. Try another card."
    shots(page, "declined")
    [declined] = stripe_double.of_type("setup_intent")
    assert (declined["status"], declined["last_setup_error"]["code"]) == (
        "requires_payment_method",
        "card_declined",
    )
    after = stripe_server.api("GET", f"/v1/subscriptions/{subscriber['id']}", key)
    assert after["default_payment_method"] == subscriber["card"]

    page.wait_for_selector("#payment-element[data-stripe-double=mounted]")
    page.get_by_label("Card number").fill("5555 5555 5555 4444")
    page.get_by_role("button", name="Save card").click()
    page.wait_for_url(re.compile(r"/portal(#.*)?$"))
    assert page.get_by_text("Card updated: your next payments will be charged to it.").is_visible()
    shots(page, "updated")

    after = stripe_server.api("GET", f"/v1/subscriptions/{subscriber['id']}", key)
    assert after["default_payment_method"] != subscriber["card"]
    saved = stripe_server.api("GET", f"/v1/customers/{subscriber['customer']}/payment_methods", key)
    by_id = {method["id"]: method for method in saved["data"]}
    new_card = by_id[after["default_payment_method"]]
    [customer_at_stripe] = stripe_double.of_type("customer")
    attached = [
        method
        for method in stripe_double.of_type("payment_method")
        if method["customer"] == customer_at_stripe["id"]
    ]
    # The first card (saved through the API) and the one typed in the portal: a Mastercard.
    assert sorted(method["card"]["last4"] for method in attached) == ["4242", "4444"]
    assert new_card["id"] != subscriber["card"]
    # Each card typed in the portal went through a SetupIntent; only the one that
    # succeeded was saved.
    setups = sorted(
        (intent["status"], intent["usage"]) for intent in stripe_double.of_type("setup_intent")
    )
    assert setups == [("requires_payment_method", "off_session"), ("succeeded", "off_session")]


def test_when_the_bank_check_cannot_open_pay_tries_again(
    stripe_server: Server, stripe_double: StripeDouble, page: Any, shots: Shots
) -> None:
    creator = open_checkout(stripe_server, stripe_double, page, unit_amount=1800)
    # The network to Stripe drops while the challenge is answered, once.
    dropped: list[str] = []

    def drop_once(route: Any) -> None:
        if dropped:
            route.fallback()
            return
        dropped.append(route.request.url)
        route.abort()

    page.route("https://api.stripe.com/_test/**", drop_once)
    pay_with(page, email="careful@example.com", card="4000002760003184", button="Pay $18.00")
    page.get_by_role("button", name="Complete").click()
    assert shown_error(page).startswith("Your bank's check could not be opened (")
    assert shown_error(page).endswith("). Press Pay to try again.")
    shots(page, "check-failed")
    [intent] = stripe_double.of_type("payment_intent")
    assert intent["status"] == "requires_action"

    # Pay sends the same payment method; the server re-reads the PaymentIntent, still
    # waiting, and the page opens the bank's check again.
    page.get_by_role("button", name="Pay $18.00").click()
    page.get_by_role("button", name="Complete").click()
    page.wait_for_selector("#success")
    session = session_of(stripe_server, page, creator["secret_key"])
    assert (session["status"], session["amount_total"]) == ("complete", 1800)
    [intent] = stripe_double.of_type("payment_intent")
    assert intent["status"] == "succeeded"
    assert len(dropped) == 1


def test_pay_what_you_want_updates_the_payment_element_and_charges_the_amount_typed(
    stripe_server: Server, stripe_double: StripeDouble, page: Any, shots: Shots
) -> None:
    creator = connected_shop(stripe_server, stripe_double)
    price = stripe_server.offer(
        creator["secret_key"],
        name="Tip jar zine",
        currency="usd",
        custom_unit_amount={"minimum": 300, "maximum": 5000, "preset": 500},
    )
    stripe_js.install(page, stripe_double)
    page.goto(f"{stripe_server.base_url}/buy/{price}")
    page.wait_for_url(re.compile(r"/pay/cs_"))
    page.wait_for_selector("#payment-element[data-stripe-double=mounted]")
    assert calls(page)[1]["options"]["amount"] == 500  # the preset

    amount = page.get_by_label("Pay what you want (USD)")
    amount.fill("12.5")
    amount.fill("12.50 dollars")  # not an amount: the element keeps the last one
    amount.fill("12.75")
    updates = [made["options"] for made in calls(page) if made["call"] == "elements.update"]
    assert updates == [{"amount": 1250}, {"amount": 1275}]
    shots(page, "pay-what-you-want")

    page.get_by_label("Email for your receipt").fill("tipper@example.com")
    page.get_by_label("Card number").fill("4242 4242 4242 4242")
    page.get_by_role("button", name=re.compile(r"^Pay")).click()
    page.wait_for_selector("#success")
    [intent] = stripe_double.of_type("payment_intent")
    assert (intent["status"], intent["amount"]) == ("succeeded", 1275)
    session = session_of(stripe_server, page, creator["secret_key"])
    assert (session["status"], session["amount_total"]) == ("complete", 1275)
