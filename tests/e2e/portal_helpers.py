"""Helpers for the portal's tests: a browser-like client (cookies kept, forms with their
CSRF token) and signing in through the emailed link."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from stallholder.app import create_app
from stallholder.jobs.worker import Worker
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.settings import Settings
from tests.smtp_server import SmtpServer

LINK = re.compile(r"http://testserver(/portal/sign-in/[A-Za-z0-9_\-]+)")


@asynccontextmanager
async def browser(
    settings: Settings, database: Database, clock: FrozenClock
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app that keeps cookies, as a browser does."""
    app = create_app(settings, database=database, clock=clock, run_worker=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match is not None, page
    return match.group(1)


async def submit(
    client: httpx.AsyncClient, page_url: str, action: str, fields: dict[str, str] | None = None
) -> httpx.Response:
    """Load ``page_url`` and post one of its forms (``action``) with its CSRF token."""
    page = await client.get(page_url)
    assert page.status_code == 200, page.text
    assert f'action="{action}"' in page.text, page.text
    return await client.post(action, data={**(fields or {}), "csrf_token": csrf_of(page.text)})


def links_in(smtp: SmtpServer, to: str) -> list[str]:
    """The sign-in paths mailed to ``to``, oldest first."""
    found: list[str] = []
    for received in smtp.received:
        if to in received.rcpt_tos:
            body = received.message.get_body(preferencelist=("plain",))
            assert body is not None
            found.extend(LINK.findall(str(body.get_content())))
    return found


async def sign_in(
    client: httpx.AsyncClient,
    *,
    email: str,
    smtp: SmtpServer,
    worker: Worker,
) -> None:
    """Ask for a link, let the worker mail it, open it and press Sign in."""
    asked = await submit(client, "/portal/sign-in", "/portal/sign-in", {"email": email})
    assert asked.status_code == 200, asked.text
    await worker.run_once()
    path = links_in(smtp, email)[-1]
    used = await submit(client, path, path)
    assert (used.status_code, used.headers.get("location")) == (303, "/portal"), used.text
