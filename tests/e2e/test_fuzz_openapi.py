"""Schemathesis over ``/openapi.json``: every operation, in-process, on SQLite and
PostgreSQL, authenticated with real keys of the kind each operation accepts.

Checks on every response: no 5xx; the status code, content type, headers and body are the
ones the document gives for that operation; an operation that declares a key refuses a
request without one. Examples are derandomized and bounded per operation
(``STALLHOLDER_FUZZ_EXAMPLES``, default below), so a run is the same run every time and
``make test`` stays short; raise the number locally to search harder.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from stallholder.app import create_app
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.settings import Settings
from tests.conftest import ADMIN_KEY, T0, Api

EXAMPLES = int(os.environ.get("STALLHOLDER_FUZZ_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    ignored_auth,
]


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


@dataclass(frozen=True)
class Keys:
    """One key of each kind, by the security scheme name the document gives it."""

    by_scheme: dict[str, str]

    def for_operation(
        self, operation: schemathesis.APIOperation[Any, Any, Any, Any], choice: int
    ) -> dict[str, str]:
        """The ``Authorization`` header for one of the schemes ``operation`` accepts."""
        accepted = [
            name
            for requirement in operation.definition.raw.get("security", [])
            for name in requirement
        ]
        if not accepted:
            return {}
        return {"Authorization": f"Bearer {self.by_scheme[accepted[choice % len(accepted)]]}"}


async def _seed(app: Any) -> Keys:
    """A creator with a catalog, a paid order, a refund and a webhook endpoint, so the lists
    the fuzzer reads have something in them."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        api = Api(http)
        creator, price = await api.shop()
        secret = creator["secret_key"]
        session = await api.session(secret, price=price["id"])
        paid = await api.confirm(secret, session["id"])
        assert paid.status_code == 200, paid.text
        order = paid.json()["order"]
        refund = await http.post(
            "/v1/refunds",
            headers={"Authorization": f"Bearer {secret}"},
            json={"order": order, "amount": 100},
        )
        assert refund.status_code == 201, refund.text
        endpoint = await http.post(
            "/v1/webhook_endpoints",
            headers={"Authorization": f"Bearer {secret}"},
            json={"url": "http://127.0.0.1:9/hook", "events": ["*"]},
        )
        assert endpoint.status_code == 201, endpoint.text
    await app.state.database.dispose()  # the fuzzer's requests run on another event loop
    return Keys(
        {
            "AdminKey": ADMIN_KEY,
            "SecretKey": secret,
            "PublishableKey": creator["publishable_key"],
        }
    )


def _schema() -> schemathesis.BaseSchema:
    """The OpenAPI document, from an app that never serves a request: every call names the
    test's own app (``app=``), and this one only makes Schemathesis call in-process."""
    with tempfile.TemporaryDirectory() as folder:
        app = create_app(
            Settings(
                data_dir=Path(folder),
                database_url=f"sqlite:///{folder}/unused.db",
                admin_key=ADMIN_KEY,
            ),
            run_worker=False,
        )
        schema = schemathesis.openapi.from_dict(app.openapi())
    schema.app = app
    return schema


SCHEMA = _schema()


@dataclass(frozen=True)
class Target:
    app: Any
    keys: Keys


@pytest.fixture
def target(settings: Settings) -> Iterator[Target]:
    """The app on this test's database, seeded, behind Schemathesis's in-process client
    (its lifespan runs on Schemathesis's event loop, and disposes the database there)."""
    database = Database(settings.database_url)
    app = create_app(settings, database=database, clock=FrozenClock(T0), run_worker=False)
    keys = anyio.run(_seed, app)
    yield Target(app, keys)
    # Schemathesis started the app's lifespan on its own event loop; ending it there
    # disposes the database's connections on the loop that opened them.
    asgi.shutdown_lifespans()


@SCHEMA.given(choice=st.integers(min_value=0, max_value=2))
@SCHEMA.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(
    case: schemathesis.Case[Any], choice: int, target: Target
) -> None:
    response = case.call(app=target.app, headers=target.keys.for_operation(case.operation, choice))
    # ``app`` also carries ``ignored_auth``'s probes (the same request without a key).
    case.validate_response(response, checks=CHECKS, transport_kwargs={"app": target.app})
