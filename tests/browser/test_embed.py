"""embed.js on a page served from a second origin (another local server on another port):
the overlay checkout, CORS with the publishable key, frame-ancestors, postMessage; and the
same overlay with the Stripe gateway, 3-D Secure included."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import Server, Shots, Site
from tests.browser.test_stripe_checkout import connected_shop
from tests.doubles import stripe_js
from tests.doubles.stripe_api import StripeDouble

pytestmark = pytest.mark.browser

SITE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Night market zines</title></head>
<body>
<h1>A creator's own site</h1>
<button data-stallholder-price="{price}">Buy the zine</button>
<p id="status">waiting</p>
<script src="{base}/embed.js" data-publishable-key="{key}"></script>
<script>
  var out = document.getElementById("status");
  document.addEventListener("stallholder:complete", function (e) {{
    out.textContent = "complete " + e.detail.order;
  }});
  document.addEventListener("stallholder:close", function () {{ out.textContent += " closed"; }});
  document.addEventListener("stallholder:error", function (e) {{
    out.textContent = "error: " + e.detail.message;
  }});
</script>
</body></html>
"""


FORGED_COMPLETE = """() => new Promise(resolve => {
  window.addEventListener("message", function seen(event) {
    if (event.data === "sentinel") { window.removeEventListener("message", seen); resolve(); }
  });
  window.postMessage({type: "stallholder:complete", order: "ord_forged"}, "*");
  window.postMessage("sentinel", "*");
})"""


def test_embed_on_another_origin_and_buy_there(
    server: Server, site: Site, page: Any, shots: Shots
) -> None:
    creator = server.shop()
    price = server.offer(
        creator["secret_key"],
        name="Riso zine",
        description="24 risograph pages.",
        unit_amount=600,
        currency="usd",
    )
    site.html = SITE.format(price=price, base=server.base_url, key=creator["publishable_key"])

    # Not listed in allowed_origins yet: the API refuses the site, and says why.
    page.goto(site.origin + "/")
    page.get_by_role("button", name="Buy the zine").click()
    status = page.locator("#status")
    status.filter(has_text="error").wait_for()
    assert status.inner_text() == (
        f"error: the page at {site.origin} may not open checkout sessions for this creator; "
        f"add it to allowed_origins with PATCH /v1/creators/{creator['id']}"
    )
    shots(page, "refused")

    updated = server.api(
        "PATCH",
        f"/v1/creators/{creator['id']}",
        creator["secret_key"],
        json={"allowed_origins": [site.origin + "/"]},
    )
    assert updated["allowed_origins"] == [site.origin]

    page.goto(site.origin + "/")
    page.get_by_role("button", name="Buy the zine").click()
    checkout = page.frame_locator("iframe[title=Checkout]")
    checkout.get_by_label("Email for your receipt").fill("faraway@example.com")
    shots(page, "overlay")
    # A message from anyone but the checkout in the overlay is ignored (messages from one
    # window arrive in order, so once the sentinel is handled the forgery was too).
    page.evaluate(FORGED_COMPLETE)
    assert status.inner_text() == "waiting"
    checkout.get_by_label("Test card (sandbox)").select_option("tok_visa")
    checkout.get_by_role("button", name="Pay $6.00").click()
    checkout.locator("#success").wait_for()
    status.filter(has_text="complete").wait_for()
    order = checkout.locator("body").get_attribute("data-order")
    assert order is not None
    assert order.startswith("ord_")
    assert status.inner_text() == f"complete {order}"
    shots(page, "paid-in-overlay")

    checkout.get_by_role("button", name="Done").click()
    page.locator("[data-stallholder-overlay]").wait_for(state="detached")
    assert status.inner_text() == f"complete {order} closed"
    shots(page, "closed")

    orders = server.api("GET", "/v1/orders", creator["secret_key"])
    assert [(o["id"], o["amount_total"], o["customer_email"]) for o in orders["data"]] == [
        (order, 600, "faraway@example.com")
    ]


def test_embed_with_the_stripe_gateway_pays_through_3d_secure_in_the_overlay(
    stripe_server: Server, stripe_double: StripeDouble, site: Site, page: Any, shots: Shots
) -> None:
    """The overlay on another origin with the Stripe Payment Element (the Stripe.js double)
    and a card that asks for 3-D Secure: the bank's check opens inside the overlay, the
    sale completes there, and the creator's page hears of it."""
    creator = connected_shop(stripe_server, stripe_double)
    price = stripe_server.offer(
        creator["secret_key"], name="Riso zine", unit_amount=600, currency="usd"
    )
    stripe_server.api(
        "PATCH",
        f"/v1/creators/{creator['id']}",
        creator["secret_key"],
        json={"allowed_origins": [site.origin]},
    )
    site.html = SITE.format(
        price=price, base=stripe_server.base_url, key=creator["publishable_key"]
    )
    stripe_js.install(page, stripe_double)

    page.goto(site.origin + "/")
    page.get_by_role("button", name="Buy the zine").click()
    checkout = page.frame_locator("iframe[title=Checkout]")
    checkout.locator("#payment-element[data-stripe-double=mounted]").wait_for()
    checkout.get_by_label("Email for your receipt").fill("faraway@example.com")
    checkout.get_by_label("Card number").fill("4000002760003184")
    checkout.get_by_role("button", name="Pay $6.00").click()
    checkout.get_by_role("button", name="Complete").click()
    shots(page, "stripe-3ds-in-overlay")
    checkout.locator("#success").wait_for()
    status = page.locator("#status")
    status.filter(has_text="complete").wait_for()
    order = checkout.locator("body").get_attribute("data-order")
    assert order is not None
    assert status.inner_text() == f"complete {order}"
    shots(page, "stripe-paid-in-overlay")

    [intent] = stripe_double.of_type("payment_intent")
    assert (intent["status"], intent["amount"]) == ("succeeded", 600)
    orders = stripe_server.api("GET", "/v1/orders", creator["secret_key"])
    assert [(o["id"], o["amount_total"], o["customer_email"]) for o in orders["data"]] == [
        (order, 600, "faraway@example.com")
    ]
