"""Every page of the seeded demo in a real browser at 375 px: nothing wider than the
phone, every visible input labelled. The store, a product page of each kind, a checkout,
and the portal and dashboard pages after signing in with a link from the SMTP server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.conftest import Server, Shots
from tests.browser.test_checkout import UNLABELLED
from tests.browser.test_portal_and_dashboard import _sign_in
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.browser

HREFS = "as => as.map(a => a.getAttribute('href'))"
# The innermost elements that reach past the screen's right edge.
WIDEST = """() => Array.from(document.querySelectorAll('body *'))
  .filter(e => e.getBoundingClientRect().right > 376 && e.children.length === 0)
  .slice(0, 3)
  .map(e => e.tagName + '.' + e.className + ': ' + (e.textContent || '').slice(0, 40))"""
DASHBOARD_PAGES = [
    "/dashboard",
    "/dashboard/products",
    "/dashboard/drops",
    "/dashboard/orders",
    "/dashboard/subscribers",
    "/dashboard/inventory",
    "/dashboard/channels",
    "/dashboard/channels/new",
    "/dashboard/balance",
    "/dashboard/webhooks",
    "/dashboard/keys",
    "/dashboard/mail",
]


def _fits_a_phone(page: Any, shots: Shots, path: str) -> list[str]:
    """What is wrong with the page open at ``path`` on a 375 px screen."""
    problems = []
    width = page.evaluate("document.documentElement.scrollWidth")
    if width > 375:
        widest = page.evaluate(WIDEST)
        problems.append(f"{path}: {width} px wide ({widest})")
    unlabelled = page.evaluate(UNLABELLED)
    if unlabelled:
        problems.append(f"{path}: unlabelled {unlabelled}")
    shots(page, re.sub(r"[^A-Za-z0-9]+", "-", path).strip("-") or "index")
    return problems


def demo_pages(page: Any, server: Server, smtp: SmtpServer) -> Iterator[str]:
    """Open every page of the seeded demo in turn, yielding each one's path once it is
    open: the store index, each store and product page, a checkout, the sign-in pages,
    the portal's pages (signed in as a demo buyer) and the dashboard's (as a creator).
    The accessibility test walks the same pages."""
    server.seed_demo()
    page.goto(server.base_url + "/")
    stores = sorted(
        {
            href
            for href in page.eval_on_selector_all("a[href^='/s/']", HREFS)
            if href.count("/") == 2
        }
    )
    assert stores == ["/s/ink-fox", "/s/kiln-and-clay", "/s/paper-lantern"]
    yield "/"
    products: list[str] = []
    for store in stores:
        page.goto(server.base_url + store)
        yield store
        products += page.eval_on_selector_all(f"a[href^='{store}/prod_']", HREFS)
    assert len(products) >= 6
    buyable = []
    for product in sorted(set(products)):
        page.goto(server.base_url + product)
        yield product
        if page.locator("a[href^='/buy/']").count():
            buyable.append(product)

    page.goto(server.base_url + buyable[0])
    page.locator("a[href^='/buy/']").first.click()
    page.wait_for_url(re.compile(r"/pay/cs_"))
    yield "/pay"
    for path in ("/portal/sign-in", "/dashboard/sign-in"):
        page.goto(server.base_url + path)
        yield path

    _sign_in(page, server, smtp, face="portal", email="reader@example.com")
    yield "/portal"
    portal_links = page.eval_on_selector_all("a[href^='/portal/']", HREFS)
    assert len(portal_links) >= 3
    for path in sorted({href for href in portal_links if "sign-" not in href}):
        page.goto(server.base_url + path)
        yield path

    _sign_in(page, server, smtp, face="dashboard", email="hello@paperlantern.example")
    for path in DASHBOARD_PAGES:
        page.goto(server.base_url + path)
        yield path


def test_every_page_of_the_demo_fits_a_phone(
    server: Server, smtp: SmtpServer, page: Any, shots: Shots
) -> None:
    page.set_viewport_size({"width": 375, "height": 800})
    # Every page runs under its Content-Security-Policy: the browser reports a refused
    # script, frame, image or request on the console.
    refused: list[str] = []
    page.on(
        "console",
        lambda message: (
            refused.append(f"{page.url}: {message.text}")
            if "Content Security Policy" in message.text
            else None
        ),
    )
    problems: list[str] = []
    for path in demo_pages(page, server, smtp):
        problems += _fits_a_phone(page, shots, path)
    assert problems == []
    assert refused == []
    # And it does refuse: a script injected into a page does not run.
    page.goto(server.base_url + "/")
    with pytest.raises(Exception, match=r"Content Security Policy|Refused"):
        page.add_script_tag(content="window.injected = 1")
    assert page.evaluate("window.injected") is None
    assert any("Executing inline script violates" in text for text in refused), refused
