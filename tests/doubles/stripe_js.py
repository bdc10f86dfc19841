"""The Stripe.js test double (``stripe_js.js``) in a Playwright browser.

``install(page, double)`` makes the page load the double where it asks for
``https://js.stripe.com/v3/``, and sends what the double sends to Stripe's API host (and to
its test controls) to the Stripe API double (``tests/doubles/stripe_api.py``). The page's
HTML stays exactly as in production: only the network answers differ.

What it proves: our pages call Stripe.js's published API in the right order with valid
options (the double throws Stripe.js's IntegrationError otherwise), the payment method
they post is one Stripe created, and the same-page ``next_action`` flow completes the
sale. What it does not prove: anything about Stripe.js itself (its iframes, its
validation, its 3-D Secure windows), nor that Stripe's servers answer as the API double
does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.doubles.stripe_api import StripeDouble

STRIPE_JS_URL = "https://js.stripe.com/v3/"
# Where the JS double sends Stripe API calls and its test controls (``/_test/…``).
STRIPE_API_HOSTS = ("https://api.stripe.com/**",)
SCRIPT = (Path(__file__).parent / "stripe_js.js").read_text()
# A cross-origin answer the page may read, as Stripe's API sends for Stripe.js.
_CORS = {"access-control-allow-origin": "*"}


def install(page: Any, double: StripeDouble) -> None:
    """Serve the Stripe.js double and route its API calls to ``double`` for ``page``."""

    def script(route: Any) -> None:
        route.fulfill(
            status=200,
            content_type="application/javascript; charset=utf-8",
            body=SCRIPT,
            headers=_CORS,
        )

    def api(route: Any) -> None:
        request = route.request
        if request.method == "OPTIONS":
            route.fulfill(status=204, headers={**_CORS, "access-control-allow-methods": "POST"})
            return
        parts = urlsplit(request.url)
        answer = httpx.request(
            request.method,
            f"{double.base_url}{parts.path}" + (f"?{parts.query}" if parts.query else ""),
            content=request.post_data_buffer,
            headers={"content-type": request.headers.get("content-type", "")},
            timeout=30,
        )
        route.fulfill(
            status=answer.status_code,
            content_type="application/json",
            body=answer.text,
            headers=_CORS,
        )

    page.route(STRIPE_JS_URL, script)
    for pattern in STRIPE_API_HOSTS:
        page.route(pattern, api)
