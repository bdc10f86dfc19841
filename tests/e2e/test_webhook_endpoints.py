"""The webhook endpoints API: secrets, filters, and the inputs it refuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from stallholder.app import create_app
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.settings import Settings
from tests.conftest import Api, bearer
from tests.e2e.test_errors import problem

pytestmark = pytest.mark.anyio


@pytest.fixture
async def strict_client(
    settings: Settings, database: Database, clock: FrozenClock
) -> AsyncIterator[httpx.AsyncClient]:
    """The platform's default: private webhook targets are refused."""
    app = create_app(
        settings.model_copy(update={"allow_private_webhook_targets": False}),
        database=database,
        clock=clock,
        run_worker=False,
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def test_an_endpoint_is_created_with_a_standard_webhooks_secret_shown_once(
    api: Api,
) -> None:
    creator = await api.creator()
    sk = bearer(creator["secret_key"])
    created = await api.http.post(
        "/v1/webhook_endpoints",
        headers=sk,
        json={"url": "https://93.184.215.14/hooks", "events": ["order.paid", "order.paid"]},
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["id"].startswith("we_")
    assert (body["events"], body["status"], body["description"]) == (
        ["order.paid"],
        "enabled",
        None,
    )
    assert body["secret"].startswith("whsec_")
    Webhook(body["secret"])  # the library accepts it

    shown = await api.http.get(f"/v1/webhook_endpoints/{body['id']}", headers=sk)
    listed = await api.http.get("/v1/webhook_endpoints", headers=sk)
    assert "secret" not in shown.json()
    assert [e["id"] for e in listed.json()["data"]] == [body["id"]]
    assert "secret" not in listed.json()["data"][0]

    changed = await api.http.patch(
        f"/v1/webhook_endpoints/{body['id']}",
        headers=sk,
        json={"events": ["*"], "description": "fulfilment"},
    )
    assert (changed.json()["events"], changed.json()["description"]) == (["*"], "fulfilment")
    deleted = await api.http.delete(f"/v1/webhook_endpoints/{body['id']}", headers=sk)
    assert deleted.json()["status"] == "deleted"
    # A deleted endpoint stays deleted: enabling or changing it is a 409 that changes nothing.
    for change in ({"status": "enabled"}, {"description": "back again"}):
        refused = await api.http.patch(
            f"/v1/webhook_endpoints/{body['id']}", headers=sk, json=change
        )
        assert (refused.status_code, refused.json()["type"]) == (
            409,
            "https://stallholder.dev/problems/webhook-endpoint-deleted",
        )
    # Nor has it a secret to roll.
    rolled = await api.http.post(f"/v1/webhook_endpoints/{body['id']}/rotate_secret", headers=sk)
    assert (rolled.status_code, rolled.json()["type"]) == (
        409,
        "https://stallholder.dev/problems/webhook-endpoint-deleted",
    )
    after = await api.http.get(f"/v1/webhook_endpoints/{body['id']}", headers=sk)
    assert (after.json()["status"], after.json()["description"]) == ("deleted", "fulfilment")


@pytest.mark.parametrize(
    ("payload", "status", "slug"),
    [
        ({"url": "ftp://example.com/hooks", "events": ["*"]}, 400, "invalid-webhook-url"),
        ({"url": "javascript:alert(1)", "events": ["*"]}, 400, "invalid-webhook-url"),
        ({"url": "/relative", "events": ["*"]}, 400, "invalid-webhook-url"),
        ({"url": "https://u:p@93.184.215.14/", "events": ["*"]}, 400, "invalid-webhook-url"),
        ({"url": "http://127.0.0.1:8000/hooks", "events": ["*"]}, 400, "private-webhook-target"),
        ({"url": "http://localhost/hooks", "events": ["*"]}, 400, "private-webhook-target"),
        ({"url": "http://10.1.2.3/hooks", "events": ["*"]}, 400, "private-webhook-target"),
        ({"url": "http://169.254.169.254/latest", "events": ["*"]}, 400, "private-webhook-target"),
        ({"url": "http://[::1]/hooks", "events": ["*"]}, 400, "private-webhook-target"),
        ({"url": "http://[::ffff:10.0.0.1]/", "events": ["*"]}, 400, "private-webhook-target"),
        ({"url": "http://[2002:7f00:1::]/", "events": ["*"]}, 400, "private-webhook-target"),
        ({"url": "http://[2002:a9fe:a9fe::]/", "events": ["*"]}, 400, "private-webhook-target"),
        ({"url": "http://[64:ff9b::a9fe:a9fe]/", "events": ["*"]}, 400, "private-webhook-target"),
        ({"url": "https://93.184.215.14:0/", "events": ["*"]}, 400, "invalid-webhook-url"),
        (
            {"url": "https://93.184.215.14/", "events": ["order.teleported"]},
            400,
            "unknown-event-type",
        ),
        (
            {"url": "https://93.184.215.14/", "events": ["*", "order.paid"]},
            400,
            "unknown-event-type",
        ),
        ({"url": "https://93.184.215.14/", "events": []}, 422, "validation-error"),
        (
            {"url": "https://93.184.215.14/", "events": ["*"], "secret": "x"},
            422,
            "validation-error",
        ),
    ],
)
async def test_bad_endpoints_are_refused_with_what_to_fix(
    strict_client: httpx.AsyncClient, payload: dict[str, Any], status: int, slug: str
) -> None:
    api = Api(strict_client)
    creator = await api.creator()
    response = await strict_client.post(
        "/v1/webhook_endpoints", headers=bearer(creator["secret_key"]), json=payload
    )
    assert problem(response) == (status, slug)
    if slug == "unknown-event-type":
        assert "order.paid" in response.json()["detail"]  # lists the valid types
    if slug == "private-webhook-target":
        assert "STALLHOLDER_ALLOW_PRIVATE_WEBHOOK_TARGETS" in response.json()["detail"]
    listed = await strict_client.get("/v1/webhook_endpoints", headers=bearer(creator["secret_key"]))
    assert listed.json()["data"] == []


async def test_endpoints_are_the_creators_own_and_need_the_secret_key(api: Api) -> None:
    creator = await api.creator()
    other = await api.creator(name="Other", email="o@example.com")
    created = await api.http.post(
        "/v1/webhook_endpoints",
        headers=bearer(creator["secret_key"]),
        json={"url": "https://93.184.215.14/", "events": ["*"]},
    )
    endpoint = created.json()["id"]
    for method, path in (
        ("GET", f"/v1/webhook_endpoints/{endpoint}"),
        ("PATCH", f"/v1/webhook_endpoints/{endpoint}"),
        ("DELETE", f"/v1/webhook_endpoints/{endpoint}"),
        ("POST", f"/v1/webhook_endpoints/{endpoint}/rotate_secret"),
        ("GET", f"/v1/webhook_endpoints/{endpoint}/deliveries"),
    ):
        response = await api.http.request(
            method, path, headers=bearer(other["secret_key"]), json={}
        )
        assert problem(response) == (404, "webhook-endpoint-not-found"), (method, path)
    publishable = await api.http.post(
        "/v1/webhook_endpoints",
        headers=bearer(creator["publishable_key"]),
        json={"url": "https://93.184.215.14/", "events": ["*"]},
    )
    assert problem(publishable) == (403, "publishable-key-not-allowed")


@pytest.mark.parametrize("field", ["url", "events", "status"])
async def test_a_null_in_an_update_is_a_422_and_changes_nothing(api: Api, field: str) -> None:
    """Found by the fuzzer: ``{"events": null}`` was a 500."""
    creator = await api.creator()
    sk = creator["secret_key"]
    created = await api.http.post(
        "/v1/webhook_endpoints",
        headers=bearer(sk),
        json={"url": "http://127.0.0.1:9/hook", "events": ["order.paid"], "description": "a"},
    )
    endpoint = f"/v1/webhook_endpoints/{created.json()['id']}"

    response = await api.http.patch(
        endpoint, headers=bearer(sk), json={field: None, "description": "b"}
    )

    assert problem(response) == (422, "validation-error")
    assert response.json()["errors"] == [
        {
            "loc": field,
            "msg": "leave the field out to keep it; it cannot be null",
            "type": "value_error",
        }
    ]
    unchanged = (await api.http.get(endpoint, headers=bearer(sk))).json()
    assert (unchanged["url"], unchanged["events"], unchanged["status"]) == (
        "http://127.0.0.1:9/hook",
        ["order.paid"],
        "enabled",
    )
    assert unchanged["description"] == "a"
    cleared = await api.http.patch(endpoint, headers=bearer(sk), json={"description": None})
    assert (cleared.status_code, cleared.json()["description"]) == (200, None)
