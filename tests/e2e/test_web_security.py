"""The pages' security kit through the ASGI app: signed cookie sessions, CSRF tokens on
forms, and errors in a browser shown as pages while the API keeps problem+json."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse

from stallholder.app import create_app
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.settings import Settings
from stallholder.web.security import (
    PAGE_POLICY,
    SESSION_COOKIE,
    CsrfProtected,
    csrf_field,
    page_policy,
    read_session,
    resolve_session_secret,
    sign_session,
)

pytestmark = pytest.mark.anyio

# A page with a form, served only in these tests, the way a page module declares one.
forms = APIRouter(include_in_schema=False, dependencies=[CsrfProtected])


@forms.get("/test-form", response_class=HTMLResponse)
async def show_form(request: Request) -> str:
    return f'<form method="post" action="/test-form">{csrf_field(request)}</form>'


@forms.post("/test-form", response_class=HTMLResponse)
async def send_form(note: Annotated[str, Form(max_length=20)]) -> str:
    return f"<p>got {note}</p>"


@forms.get("/test-boom", response_class=HTMLResponse)
async def boom() -> str:
    raise RuntimeError("a bug")


def _token(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match is not None, page
    return match.group(1)


async def _client(settings: Settings, database: Database, clock: FrozenClock) -> httpx.AsyncClient:
    app = create_app(settings, database=database, clock=clock, run_worker=False)
    app.include_router(forms)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_a_form_post_needs_the_sessions_csrf_token(
    settings: Settings, database: Database, clock: FrozenClock
) -> None:
    async with await _client(settings, database, clock) as browser:
        page = await browser.get("/test-form")
        cookie = page.headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=")
        assert cookie.endswith("; Path=/; Max-Age=1209600; HttpOnly; SameSite=Lax")
        token = _token(page.text)

        without = await browser.post("/test-form", data={"note": "hi"})
        assert without.status_code == 403
        assert without.headers["content-type"] == "text/html; charset=utf-8"
        assert "This form has expired" in without.text
        assert "reload the page and send it again" in without.text

        wrong = await browser.post("/test-form", data={"note": "hi", "csrf_token": "x" + token})
        assert wrong.status_code == 403

        sent = await browser.post("/test-form", data={"note": "hi", "csrf_token": token})
        assert (sent.status_code, sent.text) == (200, "<p>got hi</p>")
        # Reading and checking the session does not rewrite the cookie.
        assert "set-cookie" not in sent.headers

    # Another browser (no cookie) with a token copied from this one is refused.
    async with await _client(settings, database, clock) as other:
        stolen = await other.post("/test-form", data={"note": "hi", "csrf_token": token})
        assert stolen.status_code == 403


async def test_a_session_cookie_is_secure_behind_https(
    settings: Settings, database: Database, clock: FrozenClock
) -> None:
    secure = settings.model_copy(update={"base_url": "https://shop.example"})
    async with await _client(secure, database, clock) as browser:
        page = await browser.get("/test-form")
        assert page.headers["set-cookie"].endswith("; HttpOnly; SameSite=Lax; Secure")


async def test_an_expired_session_is_dropped(
    settings: Settings, database: Database, clock: FrozenClock
) -> None:
    async with await _client(settings, database, clock) as browser:
        token = _token((await browser.get("/test-form")).text)
        clock.advance(timedelta(days=14, seconds=1))
        late = await browser.post("/test-form", data={"note": "hi", "csrf_token": token})
        assert late.status_code == 403
        # The stale cookie is deleted.
        assert late.headers["set-cookie"].startswith(f"{SESSION_COOKIE}=; Path=/; Max-Age=0;")


async def test_errors_are_pages_in_a_browser_and_problems_in_the_api(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/pay/cs_missing")
    assert page.status_code == 404
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "<h1>No such checkout session</h1>" in page.text
    assert 'href="/"' in page.text

    # Elsewhere (an unknown path, a checkout link) a browser gets a page, a client a problem.
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    missing = await client.get("/no-such-page", headers=browser)
    assert missing.status_code == 404
    assert "there is no page at /no-such-page" in missing.text
    link = await client.get("/l/link_missing", headers=browser)
    assert (link.status_code, link.headers["content-type"]) == (404, "text/html; charset=utf-8")
    problem = await client.get("/l/link_missing")
    assert (problem.status_code, problem.headers["content-type"]) == (
        404,
        "application/problem+json",
    )

    api = await client.get("/v1/checkout/sessions/cs_missing")
    assert api.status_code == 401
    assert api.headers["content-type"] == "application/problem+json"
    unknown = await client.get("/v1/nothing-here")
    assert unknown.headers["content-type"] == "application/problem+json"


def test_a_signed_session_cannot_be_altered() -> None:
    value = sign_session({"buyer": "buy_1"}, secret="s1", issued_at=1000)
    assert read_session(value, secret="s1", now=1000, max_age=timedelta(days=1)) == {
        "buyer": "buy_1"
    }
    payload, signature = value.split(".")
    forged = sign_session({"buyer": "buy_2"}, secret="s1", issued_at=1000).split(".")[0]
    assert read_session(f"{forged}.{signature}", secret="s1", now=1000, max_age=timedelta(1)) == {}
    assert read_session(value, secret="s2", now=1000, max_age=timedelta(days=1)) == {}
    assert read_session(payload, secret="s1", now=1000, max_age=timedelta(days=1)) == {}
    assert read_session(value, secret="s1", now=1000 + 86401, max_age=timedelta(days=1)) == {}
    assert read_session("garbage.x", secret="s1", now=1000, max_age=timedelta(days=1)) == {}


def test_the_session_secret_is_generated_once(tmp_path: Path) -> None:
    first = resolve_session_secret("", tmp_path / "var")
    assert len(first) == 43
    assert resolve_session_secret("", tmp_path / "var") == first
    assert (tmp_path / "var" / "session-secret").stat().st_mode & 0o777 == 0o600
    assert resolve_session_secret("configured", tmp_path / "var") == "configured"


async def test_pages_carry_a_content_security_policy_and_the_api_does_not(
    settings: Settings, database: Database, clock: FrozenClock
) -> None:
    async with await _client(settings, database, clock) as browser:
        for path in ("/", "/test-form", "/portal/sign-in", "/dashboard/sign-in", "/nowhere"):
            page = await browser.get(path, headers={"accept": "text/html"})
            assert page.headers["content-type"].startswith("text/html"), path
            assert page.headers["content-security-policy"] == (
                f"{PAGE_POLICY}; frame-ancestors 'none'"
            ), path
            assert page.headers["x-content-type-options"] == "nosniff"
            assert page.headers["referrer-policy"] == "same-origin"
        # A 500 page is made outside the middleware: it carries the policy itself.
        crashed = await browser.get("/test-boom", headers={"accept": "text/html"})
        assert crashed.status_code == 500
        assert crashed.headers["content-type"].startswith("text/html")
        assert crashed.headers["content-security-policy"] == (
            f"{PAGE_POLICY}; frame-ancestors 'none'"
        )
        assert crashed.headers["x-content-type-options"] == "nosniff"
        docs = await browser.get("/docs")
        # FastAPI's docs page starts Swagger UI with an inline script: framing rule only.
        assert docs.headers["content-security-policy"] == "frame-ancestors 'none'"
        api = await browser.get("/v1/products")
        assert api.headers["content-type"] == "application/problem+json"
        assert "content-security-policy" not in api.headers


def test_the_policy_allows_scripts_from_the_app_and_stripe_only() -> None:
    directives = {part.split(" ", 1)[0]: part.split(" ", 1)[1] for part in PAGE_POLICY.split("; ")}
    assert directives["script-src"] == "'self' https://js.stripe.com https://*.js.stripe.com"
    assert directives["frame-src"] == (
        "'self' https://js.stripe.com https://*.js.stripe.com https://hooks.stripe.com"
    )
    assert directives["connect-src"] == "'self' https://api.stripe.com"
    assert (directives["object-src"], directives["base-uri"], directives["form-action"]) == (
        "'none'",
        "'none'",
        "'self'",
    )
    # A page that names who may frame it keeps that rule.
    assert page_policy("/pay/cs_1", "frame-ancestors 'self' https://zine.example") == (
        f"{PAGE_POLICY}; frame-ancestors 'self' https://zine.example"
    )
    assert page_policy("/redoc", None) == "frame-ancestors 'none'"
