"""Schemathesis over ``/openapi.json``: every operation, in-process, on SQLite and
PostgreSQL, authenticated with real keys of the kind each operation accepts.

Checks on every response: no 5xx; the status code, content type, headers and body are the
ones the document gives for that operation; an operation that declares a key refuses a
request without one. One test per operation, and one that chains calls through the links
Schemathesis infers (create a product, then read, change and price it).

Examples are derandomized and bounded per operation (``STALLHOLDER_FUZZ_EXAMPLES``,
default below), so a run is the same run every time and ``make test`` stays short; raise
the number locally to search harder.
"""

from __future__ import annotations

import dataclasses
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
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
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
from tests.conftest import ADMIN_KEY, T0, Api, bearer

EXAMPLES = int(os.environ.get("STALLHOLDER_FUZZ_EXAMPLES", "25"))
# Seconds one in-process call may take: Schemathesis's default (10) is exceeded by a call on
# PostgreSQL when the suite's other processes keep both cores busy.
CALL_TIMEOUT = 60
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


# Rolling the seeded creator's keys would leave every later request a 401.
KEEP_FUZZED_IDS = {"/v1/creators/{creator_id}/keys/roll"}


@dataclass(frozen=True)
class Seeded:
    """One key of each kind, by the security scheme name the document gives it, and the
    ids of the seeded creator's objects, by the path parameter that names them."""

    keys: dict[str, str]
    ids: dict[str, str]

    def authorization(
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
        return {"Authorization": f"Bearer {self.keys[accepted[choice % len(accepted)]]}"}

    def name_real_objects(self, case: schemathesis.Case[Any]) -> None:
        """Point the path at seeded objects, so the fuzzed query and body reach the code
        behind the 404."""
        if case.operation.path in KEEP_FUZZED_IDS or not case.path_parameters:
            return
        for name in case.path_parameters:
            if name in self.ids:
                case.path_parameters[name] = self.ids[name]


async def _seed(app: Any) -> Seeded:
    """A creator with a customer, a catalog, a checkout link, an open session, a paid and
    partly refunded order and a webhook endpoint, so reads find something and writes have
    real objects to change."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        api = Api(http)
        creator, price = await api.shop()
        secret = creator["secret_key"]
        auth = bearer(secret)

        async def created(path: str, body: dict[str, Any]) -> str:
            response = await http.post(path, headers=auth, json=body)
            assert response.status_code == 201, response.text
            identifier: str = response.json()["id"]
            return identifier

        paid = await api.session(secret, price=price["id"])
        confirmed = await api.confirm(secret, paid["id"])
        assert confirmed.status_code == 200, confirmed.text
        order = confirmed.json()["order"]
        await created("/v1/refunds", {"order": order, "amount": 100})
        events = await http.get("/v1/events", headers=auth)
        ids = {
            "creator_id": creator["id"],
            "product_id": price["product"],
            "price_id": price["id"],
            "order_id": order,
            "event_id": events.json()["data"][0]["id"],
            "session_id": (await api.session(secret, price=price["id"]))["id"],
            "customer_id": await created("/v1/customers", {"email": "ada@example.com"}),
            "collection_id": await created(
                "/v1/collections", {"name": "Zines", "products": [price["product"]]}
            ),
            "link_id": await created(
                "/v1/checkout/links", {"line_items": [{"price": price["id"]}]}
            ),
            "endpoint_id": await created(
                "/v1/webhook_endpoints", {"url": "http://127.0.0.1:9/hook", "events": ["*"]}
            ),
        }
    await app.state.database.dispose()  # the fuzzer's requests run on another event loop
    keys = {
        "AdminKey": ADMIN_KEY,
        "SecretKey": secret,
        "PublishableKey": creator["publishable_key"],
    }
    return Seeded(keys=keys, ids=ids)


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
    seeded: Seeded

    @property
    def transport(self) -> dict[str, Any]:
        return {"app": self.app, "timeout": CALL_TIMEOUT}


@pytest.fixture
def target(settings: Settings) -> Iterator[Target]:
    """The app on this test's database, seeded, behind Schemathesis's in-process client
    (its lifespan runs on Schemathesis's event loop, and disposes the database there)."""
    database = Database(settings.database_url)
    app = create_app(settings, database=database, clock=FrozenClock(T0), run_worker=False)
    seeded = anyio.run(_seed, app)
    yield Target(app, seeded)
    # Schemathesis started the app's lifespan on its own event loop; ending it there
    # disposes the database's connections on the loop that opened them.
    asgi.shutdown_lifespans()


@SCHEMA.given(choice=st.integers(min_value=0, max_value=2), real_ids=st.booleans())
@SCHEMA.parametrize()
@hypothesis_settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(
    case: schemathesis.Case[Any], choice: int, real_ids: bool, target: Target
) -> None:
    if real_ids:
        target.seeded.name_real_objects(case)
    headers = target.seeded.authorization(case.operation, choice)
    response = case.call(app=target.app, headers=headers, timeout=CALL_TIMEOUT)
    # ``app`` also carries ``ignored_auth``'s probes (the same request without a key).
    case.validate_response(response, checks=CHECKS, transport_kwargs=target.transport)


def test_sequences_of_calls_answer_as_documented(target: Target) -> None:
    """Stateful: calls chained through the links Schemathesis infers (an id one response
    returns, used in the next request), each checked as above."""
    seeded = target.seeded

    create_creator = SCHEMA["/v1/creators"]["POST"]

    class Chains(SCHEMA.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # Each scenario acts as a creator of its own, so what one scenario made (a
            # collection's slug, a variant's SKU, a buyer's saved card) never changes the
            # answers in the next: the same steps always get the same statuses, as
            # Hypothesis expects when it replays a scenario.
            created = create_creator.Case(
                body={"display_name": "Scenario", "email": "scenario@example.com"}
            ).call(app=target.app, headers=bearer(ADMIN_KEY))
            assert created.status_code == 201, created.text
            body = created.json()
            self.keys = dataclasses.replace(
                seeded,
                keys={
                    **seeded.keys,
                    "SecretKey": body["secret_key"],
                    "PublishableKey": body["publishable_key"],
                },
            )

        def get_call_kwargs(self, case: schemathesis.Case[Any]) -> dict[str, Any]:
            return {
                "app": target.app,
                "headers": self.keys.authorization(case.operation, 0),
                "timeout": CALL_TIMEOUT,
            }

        def validate_response(
            self,
            response: schemathesis.Response,
            case: schemathesis.Case[Any],
            additional_checks: Any = None,
            **kwargs: Any,
        ) -> None:
            case.validate_response(response, checks=CHECKS, transport_kwargs=target.transport)

    Chains.run(
        settings=hypothesis_settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            stateful_step_count=6,
        )
    )
