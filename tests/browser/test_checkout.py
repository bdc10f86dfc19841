"""The hosted checkout in a real browser: buy, subscribe with consent, 3-D Secure."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.browser.conftest import Server, Shots, Site, wait_for_mail
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.browser

# Every visible form control without a label (its own <label>, or an aria-label).
UNLABELLED = """() => Array.from(document.querySelectorAll('input, select, textarea'))
  .filter(e => e.type !== 'hidden')
  .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
  .map(e => e.name || e.id)"""


def test_buy_a_one_time_product_on_a_phone(
    server: Server, smtp: SmtpServer, site: Site, page: Any, shots: Shots
) -> None:
    creator = server.shop()
    server.offer(
        creator["secret_key"],
        name="Riso zine",
        description="24 risograph pages about night markets.",
        images=[f"{site.origin}/pixel.png"],
        unit_amount=600,
        currency="usd",
    )
    page.set_viewport_size({"width": 375, "height": 800})
    page.goto(server.base_url + "/")
    shots(page, "store")
    page.get_by_role("link", name="Buy").click()
    page.wait_for_url(re.compile(r"/pay/cs_"))
    assert page.locator("#merchant").inner_text() == "Paper Lantern Zines"
    assert page.get_by_text("24 risograph pages about night markets.").is_visible()
    image = page.locator("img.thumb")
    assert image.get_attribute("src") == f"{site.origin}/pixel.png"
    assert image.evaluate("img => img.complete && img.naturalWidth") == 1
    assert page.get_by_role("link", name="← Back to Paper Lantern Zines").is_visible()
    assert page.evaluate(UNLABELLED) == []
    # Nothing wider than the phone: no sideways scrolling.
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    shots(page, "checkout")

    page.get_by_label("Email for your receipt").fill("reader@example.com")
    page.get_by_label("Test card (sandbox)").select_option("tok_chargeDeclined")
    page.get_by_role("button", name="Pay $6.00").click()
    error = page.locator("#payment_method-error")
    assert error.inner_text() == "The card was declined."
    # What the buyer typed is kept, and the field says it is the one at fault.
    assert page.get_by_label("Email for your receipt").input_value() == "reader@example.com"
    assert page.get_by_label("Test card (sandbox)").get_attribute("aria-invalid") == "true"
    shots(page, "declined")

    page.get_by_label("Test card (sandbox)").select_option("tok_visa")
    page.get_by_role("button", name="Pay $6.00").click()
    page.wait_for_selector("#success")
    assert page.get_by_role("heading", level=1).inner_text() == "Thank you"
    assert page.locator("#success").inner_text() == (
        "Paid. Your receipt number is PAPER-LANTERN-000001. "
        "We sent the receipt to reader@example.com."
    )
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    shots(page, "paid")

    receipt = wait_for_mail(smtp, to="reader@example.com", subject_contains="Your receipt")
    assert str(receipt.message["subject"]) == (
        "Your receipt from Paper Lantern Zines [PAPER-LANTERN-000001]"
    )


def test_subscribe_with_consent(server: Server, smtp: SmtpServer, page: Any, shots: Shots) -> None:
    creator = server.shop()
    price = server.offer(
        creator["secret_key"],
        name="Zine of the month",
        description="A new zine in your letterbox every month.",
        unit_amount=300,
        currency="usd",
        recurring={"interval": "month"},
    )
    page.goto(f"{server.base_url}/buy/{price}")
    page.wait_for_url(re.compile(r"/pay/cs_"))
    terms = page.locator("#renewal-terms p").first.inner_text()
    assert terms.startswith("$3.00 every month, first charged today")
    assert page.evaluate(UNLABELLED) == []
    shots(page, "terms")

    page.get_by_label("Email for your receipt").fill("subscriber@example.com")
    page.get_by_role("button", name="Subscribe").click()
    assert page.locator("#consent-error").inner_text() == (
        "Tick the box to agree to the renewal terms before you subscribe."
    )
    assert page.get_by_label("Email for your receipt").input_value() == "subscriber@example.com"
    shots(page, "consent-missing")

    # By keyboard alone: Space ticks the box, Enter on the button sends the form.
    page.get_by_label(re.compile("I agree to the renewal terms")).focus()
    page.keyboard.press("Space")
    assert page.get_by_label(re.compile("I agree to the renewal terms")).is_checked()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "pay-button"
    page.keyboard.press("Enter")
    page.wait_for_selector("#success")
    subscription = page.locator("body").get_attribute("data-subscription")
    assert subscription is not None
    assert page.locator("#success").inner_text() == (
        f"You are subscribed. Your subscription is {subscription}. "
        "Receipts for each payment go to subscriber@example.com."
    )
    shots(page, "subscribed")

    consent = server.api("GET", f"/v1/subscriptions/{subscription}/consent", creator["secret_key"])
    assert consent["terms"] == terms
    assert "Chrome" in consent["user_agent"]
    receipt = wait_for_mail(smtp, to="subscriber@example.com", subject_contains="Your receipt")
    assert (
        str(receipt.message["subject"])
        == "Your receipt from Paper Lantern Zines [PAPER-LANTERN-000001]"
    )


def test_three_d_secure(server: Server, page: Any, shots: Shots) -> None:
    creator = server.shop()
    price = server.offer(
        creator["secret_key"], name="Poster", kind="digital", unit_amount=1800, currency="usd"
    )
    page.goto(f"{server.base_url}/buy/{price}")
    page.get_by_label("Email for your receipt").fill("careful@example.com")
    page.get_by_label("Test card (sandbox)").select_option("tok_authenticationRequired")
    page.get_by_role("button", name="Pay $18.00").click()
    page.wait_for_url(re.compile(r"/pay/cs_\w+/authenticate"))
    assert page.get_by_role("heading", level=1).inner_text() == "Confirm your payment"
    assert "Paper Lantern Zines asks to charge $18.00 to your card." in page.inner_text("main")
    shots(page, "challenge")

    page.get_by_role("button", name="Approve payment").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#success")
    assert page.locator("#success").inner_text() == (
        "Paid. Your receipt number is PAPER-LANTERN-000001. "
        "We sent the receipt to careful@example.com."
    )
    shots(page, "paid")
    session_id = page.locator("body").get_attribute("data-session")
    session = server.api("GET", f"/v1/checkout/sessions/{session_id}", creator["secret_key"])
    assert (session["status"], session["payment_status"], session["amount_total"]) == (
        "complete",
        "paid",
        1800,
    )
