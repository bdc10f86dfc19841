"""Browser tests: Playwright driving Debian's Chromium against a real server.

Each test gets ``stallholder serve`` in a subprocess on a free port (a migrated SQLite
copy, the sandbox gateway, the embedded worker) sending mail to a real local SMTP server
(aiosmtpd). Screenshots go to ``tests/browser/screenshots/<test>/`` (not committed).

Without Chromium (``/usr/bin/chromium``) or the ``playwright`` package these tests skip
with the reason; in CI (``CI=true``) they fail instead, so a broken install never passes
as green. Playwright's own browser download is never used.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, bearer
from tests.doubles.stripe_api import StripeDouble
from tests.smtp_server import Received, SmtpServer, free_port

CHROMIUM = Path(os.environ.get("STALLHOLDER_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).parent / "screenshots"
STALLHOLDER = Path(sys.executable).with_name("stallholder")
# A 1x1 PNG, as a product image served from another origin.
PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, through Playwright's sync API, for one test: Playwright
    keeps an event loop of its own running while it is started, and a session-long one
    breaks every asyncio test that pytest-xdist runs after it in the same process
    ("Cannot run the event loop while another loop is running")."""
    if not CHROMIUM.exists():
        _unavailable(f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable(
            "the playwright package is not installed (pip install -r requirements-dev.lock)"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        yield launched
        launched.close()


@dataclass
class Shots:
    """Saves numbered screenshots of a page under the test's own folder."""

    folder: Path
    count: int = 0

    def __call__(self, page: Any, name: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Shots:
    folder = SCREENSHOTS / re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    return Shots(folder)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    context.set_default_timeout(15_000)
    opened = context.new_page()
    yield opened
    context.close()


class Server:
    """``stallholder serve`` in a subprocess, answering on ``base_url``."""

    def __init__(
        self,
        *,
        database_url: str,
        data_dir: Path,
        smtp_port: int,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / f"server-{self.port}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.env = env = {
            **os.environ,
            "STALLHOLDER_DATABASE_URL": database_url,
            "STALLHOLDER_DATA_DIR": str(data_dir),
            "STALLHOLDER_ADMIN_KEY": ADMIN_KEY,
            "STALLHOLDER_BASE_URL": self.base_url,
            "STALLHOLDER_PAYMENT_GATEWAY": "sandbox",
            "STALLHOLDER_EMBEDDED_WORKER": "true",
            "STALLHOLDER_WORKER_POLL_SECONDS": "0.5",
            "STALLHOLDER_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
            **(extra_env or {}),
        }
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603
                [str(STALLHOLDER), "serve", "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        for _ in range(1200):  # at most about a minute on a busy machine
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"the server did not start:\n{self.log.read_text()[-3000:]}")

    def seed_demo(self) -> None:
        """``stallholder demo`` on the server's database (its creators, drops, buyers)."""
        subprocess.run(  # noqa: S603
            [str(STALLHOLDER), "demo"], env=self.env, check=True, capture_output=True, timeout=120
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def api(self, method: str, path: str, key: str = ADMIN_KEY, **kwargs: Any) -> Any:
        response = httpx.request(
            method, f"{self.base_url}{path}", headers=bearer(key), timeout=30, **kwargs
        )
        assert response.status_code in (200, 201), response.text
        return response.json()

    def shop(
        self, *, name: str = "Paper Lantern Zines", slug: str = "paper-lantern"
    ) -> dict[str, Any]:
        """A creator listed in the store index (its keys under ``secret_key`` /
        ``publishable_key``)."""
        created: dict[str, Any] = self.api(
            "POST",
            "/v1/creators",
            json={"display_name": name, "email": "hi@example.com", "slug": slug, "listed": True},
        )
        return created

    def offer(
        self,
        key: str,
        *,
        name: str,
        description: str = "",
        kind: str = "digital",
        images: list[str] | None = None,
        **price: Any,
    ) -> str:
        """A published product with one price; returns the price's id."""
        product = self.api(
            "POST",
            "/v1/products",
            key,
            json={
                "kind": kind,
                "name": name,
                "description": description,
                "status": "published",
                "images": images or [],
            },
        )
        created = self.api("POST", "/v1/prices", key, json={"product": product["id"], **price})
        price_id: str = created["id"]
        return price_id


class Site:
    """A second origin (http://127.0.0.1:<another port>): ``html`` at every path, and
    ``PIXEL`` (a PNG) at ``/pixel.png``."""

    def __init__(self) -> None:
        self.html = ""
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                is_image = self.path == "/pixel.png"
                body = PIXEL if is_image else site.html.encode()
                self.send_response(200)
                self.send_header("Content-Type", "image/png" if is_image else "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def site() -> Iterator[Site]:
    running = Site()
    yield running
    running.stop()


@pytest.fixture
def server(sqlite_url: str, tmp_path: Path, smtp: SmtpServer) -> Iterator[Server]:
    running = Server(database_url=sqlite_url, data_dir=tmp_path / "server", smtp_port=smtp.port)
    yield running
    running.stop()


@pytest.fixture
def stripe_server(
    sqlite_url: str, tmp_path: Path, smtp: SmtpServer, stripe_double: StripeDouble
) -> Iterator[Server]:
    """The server with the Stripe gateway against the Stripe API double."""
    running = Server(
        database_url=sqlite_url,
        data_dir=tmp_path / "server",
        smtp_port=smtp.port,
        extra_env={
            "STALLHOLDER_PAYMENT_GATEWAY": "stripe",
            "STALLHOLDER_STRIPE_SECRET_KEY": stripe_double.secret_key,
            "STALLHOLDER_STRIPE_WEBHOOK_SECRET": stripe_double.webhook_secret,
            "STALLHOLDER_STRIPE_PUBLISHABLE_KEY": stripe_double.publishable_key,
            "STALLHOLDER_STRIPE_API_BASE": stripe_double.base_url,
        },
    )
    yield running
    running.stop()


def wait_for_mail(smtp: SmtpServer, *, to: str, subject_contains: str) -> Received:
    """The first message to ``to`` whose subject has ``subject_contains``, once the
    server's worker has sent it (at most about 30 s)."""
    for _ in range(300):
        for received in smtp.received:
            if to in received.rcpt_tos and subject_contains in str(received.message["subject"]):
                return received
        time.sleep(0.1)
    subjects = [(r.rcpt_tos, str(r.message["subject"])) for r in smtp.received]
    pytest.fail(f"no mail to {to} about {subject_contains!r}; received: {subjects}")
