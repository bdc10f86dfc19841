"""Shared fixtures: migrated databases (SQLite always, PostgreSQL when configured), the app,
an HTTP client, a settable clock, and typed factories."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from stallholder.app import create_app
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database, sync_url
from stallholder.migrations import upgrade
from stallholder.payments.gateway import SandboxGateway
from stallholder.payments.sandbox import DatabaseChargeStore
from stallholder.payments.stripe_gateway import StripeGateway
from stallholder.settings import Settings
from stallholder.tables import metadata
from tests.doubles.stripe_api import StripeDouble
from tests.doubles.stripe_api import serve as serve_stripe_double
from tests.smtp_server import Inbox, SmtpServer

POSTGRES_URL_VARIABLE = "STALLHOLDER_TEST_POSTGRES_URL"
ADMIN_KEY = "admin_test_key"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test: migrations run once per session."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session, dropped afterwards."""
    base = os.environ.get(POSTGRES_URL_VARIABLE)
    if not base:
        if os.environ.get("CI"):
            pytest.fail(
                f"{POSTGRES_URL_VARIABLE} must be set in CI; PostgreSQL tests never skip there"
            )
        pytest.skip(
            f"PostgreSQL tests skipped: set {POSTGRES_URL_VARIABLE}=postgresql://user@host/db"
        )
    name = f"stallholder_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(sync_url(base), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(sync_url(base)).set(database=name).render_as_string(hide_password=False)
    plain = "postgresql://" + url.split("://", 1)[1]
    upgrade(plain)
    yield plain
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _truncate_postgres(url: str) -> None:
    engine = create_engine(sync_url(url))
    names = ", ".join(f'"{table.name}"' for table in metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "stallholder.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def postgres_url(postgres_server_url: str) -> str:
    _truncate_postgres(postgres_server_url)
    return postgres_server_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_database_url(request: pytest.FixtureRequest) -> str:
    """Runs the test once on SQLite and once on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """SQLite only: for tests whose behaviour does not depend on the database."""
    return sqlite_url


@pytest.fixture(autouse=True)
def _hermetic_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read from the environment (a ``Worker`` built without settings) keep their
    files in the test's folder and never reach a real mail server; the CLI's tables are laid
    out for a wide terminal, whatever terminal (or none, under pytest-xdist) runs the tests."""
    monkeypatch.setenv("STALLHOLDER_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("STALLHOLDER_SMTP_URL", raising=False)
    monkeypatch.setattr("stallholder.cli.console", Console(width=200))


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) on a free local port; ``smtp.received`` holds what it
    was sent."""
    server = SmtpServer(Inbox())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "var",
        database_url=database_url,
        admin_key=ADMIN_KEY,
        base_url="http://testserver",
        embedded_worker=False,
        # Webhook receivers in tests listen on 127.0.0.1.
        allow_private_webhook_targets=True,
        # Retries are due exactly on their schedule; tests/integration/test_work.py
        # covers the jitter.
        worker_retry_jitter=0.0,
        # Tests drive storms of buyers from one address (and one buyer's many tabs) through
        # the drop rate limits; tests/e2e/test_drop_rate_limits.py sets its own.
        drop_rate_limit_per_ip=0,
        drop_rate_limit_per_buyer=0,
    )


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Database]:
    database = Database(settings.database_url)
    yield database
    await database.dispose()


@pytest.fixture
def gateway(database: Database) -> SandboxGateway:
    """The sandbox gateway, remembering its charges in the test's database (a module with
    a gateway of its own defines this fixture again)."""
    return SandboxGateway(DatabaseChargeStore(database))


@pytest.fixture
async def client(
    settings: Settings, database: Database, clock: FrozenClock
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, database=database, clock=clock, run_worker=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Api:
    """Typed helpers over the HTTP API, so tests read as the story they tell."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def creator(
        self, *, name: str = "Paper Lantern Zines", email: str = "hi@example.com", **extra: Any
    ) -> dict[str, Any]:
        response = await self.http.post(
            "/v1/creators",
            headers=bearer(ADMIN_KEY),
            json={"display_name": name, "email": email, **extra},
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def product(
        self,
        key: str,
        *,
        kind: str = "physical",
        name: str = "Riso zine",
        status: str = "published",
        **extra: Any,
    ) -> dict[str, Any]:
        response = await self.http.post(
            "/v1/products",
            headers=bearer(key),
            json={"kind": kind, "name": name, "status": status, **extra},
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def price(
        self,
        key: str,
        *,
        product: str,
        unit_amount: int | None = 1500,
        currency: str = "usd",
        **extra: Any,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"product": product, "currency": currency, **extra}
        if unit_amount is not None:
            payload["unit_amount"] = unit_amount
        response = await self.http.post("/v1/prices", headers=bearer(key), json=payload)
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def session(
        self, key: str, *, price: str, quantity: int = 1, email: str = "buyer@example.com"
    ) -> dict[str, Any]:
        response = await self.http.post(
            "/v1/checkout/sessions",
            headers=bearer(key),
            json={"line_items": [{"price": price, "quantity": quantity}], "customer_email": email},
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def confirm(
        self, key: str, session_id: str, token: str = "tok_visa", **headers: str
    ) -> httpx.Response:
        return await self.http.post(
            f"/v1/checkout/sessions/{session_id}/confirm",
            headers={**bearer(key), **headers},
            json={"payment_method": token},
        )

    async def shop(self, *, unit_amount: int = 1500) -> tuple[dict[str, Any], dict[str, Any]]:
        """A creator listed in the store, with one published product and price:
        (creator, price)."""
        creator = await self.creator(listed=True)
        product = await self.product(creator["secret_key"])
        price = await self.price(
            creator["secret_key"], product=product["id"], unit_amount=unit_amount
        )
        return creator, price


@pytest.fixture
def api(client: httpx.AsyncClient) -> Api:
    return Api(client)


@pytest.fixture
def stripe_double() -> Iterator[StripeDouble]:
    """The Stripe API test double, served on 127.0.0.1 for the real SDK."""
    double = StripeDouble()
    with serve_stripe_double(double):
        yield double


@pytest.fixture
async def stripe_gateway(stripe_double: StripeDouble) -> AsyncIterator[StripeGateway]:
    """The real Stripe gateway, pointed at the double (no network retries: no sleeps)."""
    gateway = StripeGateway(
        secret_key=stripe_double.secret_key,
        webhook_secret=stripe_double.webhook_secret,
        api_base=stripe_double.base_url,
        max_network_retries=0,
    )
    yield gateway
    await gateway.aclose()
