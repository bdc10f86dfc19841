"""Every portal page, as served, checked for what a phone and a keyboard need: the
viewport meta tag, no script, every visible input labelled, every form's submit a real
button with text, every POST form carrying the CSRF token, one h1, and a language."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest

from stallholder.jobs.worker import Worker
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.settings import Settings
from tests.conftest import ADMIN_KEY, Api, bearer
from tests.e2e.portal_helpers import browser, sign_in
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.anyio


@dataclass
class Form:
    method: str
    fields: list[str] = field(default_factory=list)
    buttons: list[str] = field(default_factory=list)


@dataclass
class Page(HTMLParser):
    """The parts of a page the checks need (the standard library's parser)."""

    labels_for: set[str] = field(default_factory=set)
    controls: list[tuple[str, str | None, bool]] = field(default_factory=list)
    forms: list[Form] = field(default_factory=list)
    scripts: int = 0
    h1: int = 0
    has_viewport: bool = False
    language: str | None = None
    _label_depth: int = 0
    _button: list[str] | None = None

    def __post_init__(self) -> None:
        super().__init__()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "html":
            self.language = found.get("lang")
        elif tag == "meta" and found.get("name") == "viewport":
            self.has_viewport = "width=device-width" in (found.get("content") or "")
        elif tag == "script":
            self.scripts += 1
        elif tag == "h1":
            self.h1 += 1
        elif tag == "label":
            self._label_depth += 1
            if found.get("for"):
                self.labels_for.add(str(found["for"]))
        elif tag == "form":
            self.forms.append(Form(method=(found.get("method") or "get").lower()))
        elif tag in ("input", "select", "textarea"):
            kind = found.get("type") or "text"
            if self.forms:
                self.forms[-1].fields.append(str(found.get("name")))
            if kind != "hidden":
                self.controls.append((tag, found.get("id"), self._label_depth > 0))
        elif tag == "button":
            self._button = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._label_depth -= 1
        elif tag == "button" and self._button is not None:
            if self.forms:
                self.forms[-1].buttons.append("".join(self._button).strip())
            self._button = None

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button.append(data)


def check(html: str, url: str) -> None:
    page = Page()
    page.feed(html)
    assert page.language == "en", url
    assert page.has_viewport, url
    assert page.scripts == 0, url
    assert page.h1 == 1, url
    for tag, control_id, is_wrapped in page.controls:
        assert is_wrapped or (control_id is not None and control_id in page.labels_for), (
            url,
            tag,
            control_id,
        )
    for form in page.forms:
        assert form.buttons, url
        assert all(form.buttons), url
        if form.method == "post":
            assert "csrf_token" in form.fields, url


@pytest.fixture
def settings(settings: Settings, smtp: SmtpServer) -> Settings:
    return settings.model_copy(update={"smtp_url": f"smtp://127.0.0.1:{smtp.port}"})


async def test_every_portal_page_is_labelled_script_free_and_fits_a_phone(
    api: Api, settings: Settings, database: Database, clock: FrozenClock, smtp: SmtpServer
) -> None:
    creator = await api.creator()
    key = creator["secret_key"]
    product = await api.product(key, kind="physical", name="Seasonal box")
    price = await api.price(
        key,
        product=product["id"],
        unit_amount=3000,
        recurring={"interval": "month"},
    )
    offer = await api.http.post(
        f"/v1/prices/{price['id']}/retention_offer", headers=bearer(key), json={"kind": "pause"}
    )
    assert offer.status_code == 200, offer.text
    clock_made = await api.http.post(
        "/v1/test_clocks", headers=bearer(ADMIN_KEY), json={"frozen_time": "2026-03-01T12:00:00Z"}
    )
    customer = await api.http.post(
        "/v1/customers",
        headers=bearer(key),
        json={"email": "ana@example.com", "country": "DE", "test_clock": clock_made.json()["id"]},
    )
    method = await api.http.post(
        f"/v1/customers/{customer.json()['id']}/payment_methods",
        headers=bearer(key),
        json={"token": "tok_visa"},
    )
    made = await api.http.post(
        "/v1/subscriptions",
        headers=bearer(key),
        json={
            "customer": customer.json()["id"],
            "items": [{"price": price["id"]}],
            "default_payment_method": method.json()["id"],
        },
    )
    assert made.status_code == 201, made.text
    subscription = made.json()["id"]
    order = (await api.http.get("/v1/orders", headers=bearer(key))).json()["data"][0]["id"]

    async with browser(settings, database, clock) as phone:
        for url in ("/portal/sign-in", "/portal/sign-in/not-a-token"):
            check((await phone.get(url)).text, url)
        await sign_in(
            phone,
            email="ana@example.com",
            smtp=smtp,
            worker=Worker(database, clock, settings=settings),
        )
        pages = [
            "/portal",
            f"/portal/subscriptions/{subscription}/cancel",  # the offer and the withdrawal choice
            f"/portal/subscriptions/{subscription}/payment-method",
            f"/portal/orders/{order}",
        ]
        for url in pages:
            response = await phone.get(url)
            assert response.status_code == 200, url
            check(response.text, url)
        # The sandbox's card form is plain HTML: no Stripe.js, no script to add a card.
        payment = (await phone.get(pages[2])).text
        assert 'name="token" value="tok_visa"' in payment
        assert "js.stripe.com" not in payment
        assert "portal_card.js" not in payment
        cancel = (await phone.get(pages[1])).text
        assert 'id="offer-form"' in cancel
        assert 'value="now"' in cancel
        missing = await phone.get("/portal/orders/ord_missing")
        assert missing.status_code == 404
        check(missing.text, "/portal/orders/ord_missing")
