"""Browser-facing security: signed cookie sessions and CSRF tokens on every form.

**Sessions.** A page's session is a small JSON object in one cookie, signed with
HMAC-SHA256 (the standard library's; the value is readable by its holder, never
forgeable). The cookie is ``HttpOnly``, ``SameSite=Lax``, ``Path=/`` and ``Secure`` when
the site's base URL is https; it carries its issue time and is refused after
``SESSION_MAX_AGE``. Pages read and write ``request.session`` as with Starlette's own
session middleware, which this replaces so that no extra dependency is needed and the
clock is the app's (tests move it).

**CSRF.** Every session gets a random token (``csrf_token``). A form carries it in a
hidden field (``{{ csrf_field(request) }}`` in a template) and a router that serves forms
declares ``dependencies=[CsrfProtected]``: a POST, PUT, PATCH or DELETE without the
session's token is refused with a 403 page. The token is compared in constant time.

The signing secret is ``STALLHOLDER_SESSION_SECRET``; without it one is generated once
and kept in ``<data_dir>/session-secret`` (mode 0600), as the admin key is.

**Page headers.** Every HTML answer carries a Content-Security-Policy (``PageHeaders``):
scripts from the app itself and Stripe.js only (no inline script, no ``eval``), frames
and API calls to the app and Stripe's hosts only, forms posted to the app only, no
plugins, and ``frame-ancestors 'none'`` unless the page set its own (the checkout page
names the one origin embedding it). The API docs (``/docs``, ``/redoc``) keep
FastAPI's inline start-up script, so they get the framing rule only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import Depends, Request
from markupsafe import Markup, escape
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stallholder.kit.clock import Clock
from stallholder.kit.errors import DomainError

SESSION_COOKIE = "stallholder_session"
SESSION_SECRET_FILE = "session-secret"  # noqa: S105 - a file name, not a secret
SESSION_MAX_AGE = timedelta(days=14)
CSRF_FIELD = "csrf_token"
_CSRF_KEY = "csrf"
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class CsrfTokenInvalid(DomainError):
    status = 403
    slug = "csrf-token-invalid"
    title = "This form has expired"


def resolve_session_secret(configured: str, data_dir: Path) -> str:
    """The secret that signs session cookies: ``configured`` if set, else one generated
    once and kept in ``<data_dir>/session-secret`` (so sign-ins survive a restart)."""
    if configured:
        return configured
    path = data_dir / SESSION_SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process wrote it first: use theirs
        return path.read_text().strip()
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret + "\n")
    return secret


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, payload: str) -> str:
    digest = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()
    return _encode(digest)


def sign_session(data: dict[str, Any], *, secret: str, issued_at: int) -> str:
    """The cookie value for ``data``: ``<base64 JSON>.<base64 HMAC>``."""
    payload = _encode(json.dumps({"d": data, "t": issued_at}, separators=(",", ":")).encode())
    return f"{payload}.{_signature(secret, payload)}"


def read_session(value: str, *, secret: str, now: int, max_age: timedelta) -> dict[str, Any]:
    """The session in a cookie value; empty when it is forged, malformed or too old."""
    payload, _, signature = value.partition(".")
    if not signature or not hmac.compare_digest(signature, _signature(secret, payload)):
        return {}
    try:
        content = json.loads(_decode(payload))
        data, issued_at = content["d"], int(content["t"])
    except (ValueError, KeyError, TypeError):
        return {}
    if not isinstance(data, dict) or not 0 <= now - issued_at <= max_age.total_seconds():
        return {}
    return data


class SessionMiddleware:
    """Loads ``scope["session"]`` from the signed cookie and writes it back when a page
    changed it (an emptied session deletes the cookie)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        secret: str,
        is_secure: bool,
        clock: Callable[[], Clock],
        max_age: timedelta = SESSION_MAX_AGE,
    ) -> None:
        self.app = app
        self.secret = secret
        self.is_secure = is_secure
        self.clock = clock
        self.max_age = max_age

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        now = int(self.clock().now().timestamp())
        cookie = _cookie(scope, SESSION_COOKIE)
        loaded = (
            read_session(cookie, secret=self.secret, now=now, max_age=self.max_age)
            if cookie
            else {}
        )
        scope["session"] = dict(loaded)

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                session = scope["session"]
                # A changed session is written back; a forged or expired one is dropped.
                if session != loaded or (cookie and not loaded):
                    headers = MutableHeaders(scope=message)
                    headers.append("Set-Cookie", self._set_cookie(session, now))
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    def _set_cookie(self, session: dict[str, Any], now: int) -> str:
        if session:
            value = sign_session(session, secret=self.secret, issued_at=now)
            max_age = int(self.max_age.total_seconds())
        else:
            value, max_age = "", 0
        attributes = f"{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax"
        return attributes + ("; Secure" if self.is_secure else "")


def _cookie(scope: Scope, name: str) -> str:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for key, value in headers:
        if key == b"cookie":
            for part in value.decode("latin-1").split(";"):
                cookie_name, _, cookie_value = part.strip().partition("=")
                if cookie_name == name:
                    return cookie_value
    return ""


def csrf_token(request: Request) -> str:
    """This session's CSRF token, created on first use."""
    token = request.session.get(_CSRF_KEY)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session[_CSRF_KEY] = token
    return token


def csrf_field(request: Request) -> Markup:
    """The hidden form field that carries the CSRF token (a Jinja global)."""
    return Markup('<input type="hidden" name="{}" value="{}">').format(
        CSRF_FIELD, escape(csrf_token(request))
    )


async def verify_csrf(request: Request) -> None:
    """Refuse an unsafe request whose form lacks this session's CSRF token.

    Raises:
        CsrfTokenInvalid: the token is missing or is not this session's.
    """
    if request.method not in _UNSAFE_METHODS:
        return
    expected = request.session.get(_CSRF_KEY)
    sent = (await request.form()).get(CSRF_FIELD)
    if (
        not isinstance(expected, str)
        or not isinstance(sent, str)
        or not hmac.compare_digest(sent.encode(), expected.encode())
    ):
        raise CsrfTokenInvalid(
            "the form was sent without this browser's security token (it may have expired, "
            "or come from another site); go back, reload the page and send it again"
        )


CsrfProtected = Depends(verify_csrf)


# Stripe's published CSP needs (Stripe.js and the subdomains it loads Elements from, its
# 3-D Secure frames, its API). The address autocomplete's Google Maps host is left out:
# no page uses Stripe's Address Element.
_STRIPE_SCRIPTS = "https://js.stripe.com https://*.js.stripe.com"
_STRIPE_FRAMES = "https://js.stripe.com https://*.js.stripe.com https://hooks.stripe.com"
_STRIPE_API = "https://api.stripe.com"
PAGE_POLICY = (
    "default-src 'self'; "
    f"script-src 'self' {_STRIPE_SCRIPTS}; "
    f"frame-src 'self' {_STRIPE_FRAMES}; "
    f"connect-src 'self' {_STRIPE_API}; "
    "img-src * data:; "
    "style-src 'self' 'unsafe-inline'; "
    "object-src 'none'; "
    "base-uri 'none'; "
    "form-action 'self'"
)
_DOCS_PATHS = ("/docs", "/redoc")


def page_policy(path: str, page_set: str | None) -> str:
    """The Content-Security-Policy of an HTML answer at ``path``; ``page_set`` is the one
    the page set itself (its ``frame-ancestors`` is kept)."""
    ancestors = "frame-ancestors 'none'"
    for directive in (page_set or "").split(";"):
        if directive.strip().startswith("frame-ancestors"):
            ancestors = directive.strip()
    if path.startswith(_DOCS_PATHS):
        return ancestors
    return f"{PAGE_POLICY}; {ancestors}"


class PageHeaders:
    """Adds the Content-Security-Policy, ``X-Content-Type-Options: nosniff`` and a
    ``Referrer-Policy`` to every ``text/html`` answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if headers.get("content-type", "").startswith("text/html"):
                    policy = page_policy(scope["path"], headers.get("content-security-policy"))
                    headers["Content-Security-Policy"] = policy
                    headers["X-Content-Type-Options"] = "nosniff"
                    if "referrer-policy" not in headers:
                        headers["Referrer-Policy"] = "same-origin"
            await send(message)

        await self.app(scope, receive, send_with_headers)
