"""axe-core (served from the venv by axe-playwright-python, no CDN) over every page of the
seeded demo at 375 px, with the WCAG 2.0, 2.1 and 2.2 A and AA rules, color contrast
included: names, labels, landmarks, keyboard focusability, contrast. No rule is turned
off; docs/accessibility.md says what axe cannot check and how that is covered."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import Server, Shots
from tests.browser.test_every_page import demo_pages
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.browser

WCAG_A_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22a", "wcag22aa"]
AXE_OPTIONS = {"runOnly": {"type": "tag", "values": WCAG_A_AA}, "resultTypes": ["violations"]}


def _violations(page: Any, path: str) -> list[str]:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options=AXE_OPTIONS)
    found = []
    for violation in results.response["violations"]:
        for node in violation["nodes"]:
            target = " ".join(map(str, node["target"]))
            summary = node["failureSummary"].splitlines()[-1].strip()
            found.append(
                f"{path}: {violation['id']} ({violation['impact']}) at {target}: {summary}"
            )
    return found


def test_every_page_of_the_demo_passes_axe(
    server: Server, smtp: SmtpServer, page: Any, shots: Shots
) -> None:
    page.set_viewport_size({"width": 375, "height": 800})
    problems: list[str] = []
    checked = []
    for path in demo_pages(page, server, smtp):
        problems += _violations(page, path)
        checked.append(path)

    # States the walk does not reach, still signed in to the dashboard: an order, the
    # forms answering with their mistakes, a webhook endpoint with its secret, a 404 page.
    page.goto(server.base_url + "/dashboard/orders")
    page.locator("a[href^='/dashboard/orders/ord_']").first.click()
    problems += _violations(page, "/dashboard/orders/{id}")
    page.goto(server.base_url + "/dashboard/drops")
    page.fill("#drop-name", "Late drop")
    page.fill("#drop-opens-at", "2030-01-02T10:00")
    page.fill("#drop-closes-at", "2030-01-01T10:00")
    page.fill("#drop-price-1", "price_nope")
    page.fill("#drop-quantity-1", "1")
    page.click("#drop-form button[type=submit]")
    page.wait_for_selector("#drop-errors")
    problems += _violations(page, "/dashboard/drops (mistakes)")
    page.goto(server.base_url + "/dashboard/webhooks")
    page.fill("#endpoint-url", "http://127.0.0.1:9/hooks")
    page.check("#endpoint-events input[value='order.paid']")
    page.click("#endpoint-form button[type=submit]")
    page.wait_for_selector("#webhook-errors")
    problems += _violations(page, "/dashboard/webhooks (refused)")
    page.goto(server.base_url + "/dashboard/products")
    page.fill("#product-name", "Print")
    page.fill("#price-amount", "12.345")
    page.click("#product-form button[type=submit]")
    page.wait_for_selector("#product-errors")
    problems += _violations(page, "/dashboard/products (mistakes)")
    shots(page, "product-mistakes")
    page.goto(server.base_url + "/s/no-such-shop")
    problems += _violations(page, "/s/no-such-shop (404)")
    shots(page, "not-found")
    assert problems == []
    assert len(checked) >= 25
