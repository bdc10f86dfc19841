"""The dashboard's webhook endpoints (issue 10: webhooks by form, not only by API): an
endpoint added with its secret shown once, the SSRF guard's refusal on the form, disabled,
enabled and deleted through the services of ``/v1/webhook_endpoints``, and a signing secret
rolled with the old one signing for a chosen while."""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from stallholder.events.models import WebhookEndpoint
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.settings import Settings
from tests.conftest import Api, bearer
from tests.e2e.portal_helpers import browser, csrf_of, submit
from tests.e2e.test_dashboard import _sign_in_from_outbox, unlabelled_controls

pytestmark = pytest.mark.anyio
SHOP = "hi@example.com"


@pytest.fixture
def database_url(any_database_url: str) -> str:
    """On SQLite and PostgreSQL."""
    return any_database_url


async def _count(database: Database, model: Any) -> int:
    async with database.read() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


async def test_webhook_endpoints_are_added_disabled_enabled_and_deleted_by_form(
    api: Api, settings: Settings, database: Database, clock: FrozenClock
) -> None:
    guarded = settings.model_copy(update={"allow_private_webhook_targets": False})
    creator = await api.creator(email=SHOP)
    key = creator["secret_key"]
    async with browser(guarded, database, clock) as phone:
        await _sign_in_from_outbox(phone, database, SHOP)
        page = await phone.get("/dashboard/webhooks")
        assert 'id="endpoint-form"' in page.text
        assert 'id="no-webhooks"' in page.text
        assert unlabelled_controls(page.text) == []

        private = await submit(
            phone,
            "/dashboard/webhooks",
            "/dashboard/webhooks",
            {"url": "http://127.0.0.1:9000/hooks", "events": "order.paid"},
        )
        assert private.status_code == 400
        assert (
            "127.0.0.1 resolves to 127.0.0.1, which is not a public address; webhooks go to "
            "public http(s) URLs" in private.text
        )
        assert 'value="http://127.0.0.1:9000/hooks"' in private.text
        assert 'value="order.paid" checked' in private.text
        no_events = await submit(
            phone,
            "/dashboard/webhooks",
            "/dashboard/webhooks",
            {"url": "https://93.184.215.14/hooks"},
        )
        assert no_events.status_code == 422
        assert "event types: tick at least one (or all events)" in no_events.text
        not_a_url = await submit(
            phone,
            "/dashboard/webhooks",
            "/dashboard/webhooks",
            {"url": "ftp://93.184.215.14/hooks", "events": "*"},
        )
        assert not_a_url.status_code == 400
        assert "the URL must start with https:// or http://" in not_a_url.text
        assert await _count(database, WebhookEndpoint) == 0

        page = await phone.get("/dashboard/webhooks")
        created = await phone.post(
            "/dashboard/webhooks",
            data={
                "url": "https://93.184.215.14/hooks",
                "description": "shop backend",
                "events": ["order.paid", "refund.created"],
                "csrf_token": csrf_of(page.text),
            },
        )
        assert created.status_code == 200, created.text
        assert 'id="endpoint-created"' in created.text
        [endpoint] = (await api.http.get("/v1/webhook_endpoints", headers=bearer(key))).json()[
            "data"
        ]
        assert (endpoint["url"], endpoint["events"], endpoint["description"]) == (
            "https://93.184.215.14/hooks",
            ["order.paid", "refund.created"],
            "shop backend",
        )
        async with database.read() as session:
            secret = (await session.get(WebhookEndpoint, endpoint["id"])).secret  # type: ignore[union-attr]
        assert secret.startswith("whsec_")
        assert f'<code id="endpoint-secret">{secret}</code>' in created.text
        # Shown once: the list never repeats it.
        listed = await phone.get("/dashboard/webhooks")
        assert secret not in listed.text
        assert 'id="endpoint-secret"' not in listed.text

        base = f"/dashboard/webhooks/{endpoint['id']}"
        disabled = await submit(phone, "/dashboard/webhooks", f"{base}/disable")
        assert (disabled.status_code, disabled.headers["location"]) == (
            303,
            f"/dashboard/webhooks#endpoint-{endpoint['id']}",
        )
        got = await api.http.get(f"/v1/webhook_endpoints/{endpoint['id']}", headers=bearer(key))
        assert (got.json()["status"], got.json()["disabled_reason"]) == (
            "disabled",
            "disabled by the creator",
        )
        enabled = await submit(phone, "/dashboard/webhooks", f"{base}/enable")
        assert enabled.status_code == 303
        got = await api.http.get(f"/v1/webhook_endpoints/{endpoint['id']}", headers=bearer(key))
        assert (got.json()["status"], got.json()["disabled_reason"]) == ("enabled", None)

        unconfirmed = await submit(phone, "/dashboard/webhooks", f"{base}/delete")
        assert unconfirmed.status_code == 422
        assert "Tick the box to delete https://93.184.215.14/hooks" in unconfirmed.text
        got = await api.http.get(f"/v1/webhook_endpoints/{endpoint['id']}", headers=bearer(key))
        assert got.json()["status"] == "enabled"
        deleted = await submit(phone, "/dashboard/webhooks", f"{base}/delete", {"confirm": "yes"})
        assert deleted.status_code == 303
        got = await api.http.get(f"/v1/webhook_endpoints/{endpoint['id']}", headers=bearer(key))
        assert got.json()["status"] == "deleted"
        after = await phone.get("/dashboard/webhooks")
        assert f'action="{base}/enable"' not in after.text
        assert f'action="{base}/delete"' not in after.text

        # Another creator's endpoint is a 404 page.
        other = await api.creator(email="other@example.com")
        theirs = await api.http.post(
            "/v1/webhook_endpoints",
            headers=bearer(other["secret_key"]),
            json={"url": "https://93.184.215.14/theirs", "events": ["*"]},
        )
        assert theirs.status_code == 201, theirs.text
        refused = await phone.post(
            f"/dashboard/webhooks/{theirs.json()['id']}/disable",
            data={"csrf_token": csrf_of(after.text)},
        )
        assert refused.status_code == 404
    got = await api.http.get(
        f"/v1/webhook_endpoints/{theirs.json()['id']}", headers=bearer(other["secret_key"])
    )
    assert got.json()["status"] == "enabled"


async def test_a_signing_secret_is_rolled_by_form_with_the_old_one_signing_for_a_while(
    api: Api, settings: Settings, database: Database, clock: FrozenClock
) -> None:
    creator = await api.creator(email=SHOP)
    key = creator["secret_key"]
    made = await api.http.post(
        "/v1/webhook_endpoints",
        headers=bearer(key),
        json={"url": "https://93.184.215.14/hooks", "events": ["*"]},
    )
    assert made.status_code == 201, made.text
    endpoint_id, first = made.json()["id"], made.json()["secret"]
    roll = f"/dashboard/webhooks/{endpoint_id}/roll"

    async def stored() -> WebhookEndpoint:
        async with database.read() as session:
            endpoint = await session.get(WebhookEndpoint, endpoint_id)
            assert endpoint is not None
            return endpoint

    async with browser(settings, database, clock) as phone:
        await _sign_in_from_outbox(phone, database, SHOP)
        page = await phone.get("/dashboard/webhooks")
        assert f'action="{roll}"' in page.text
        assert '<option value="86400" selected>24 hours</option>' in page.text
        assert unlabelled_controls(page.text) == []

        rolled = await submit(phone, "/dashboard/webhooks", roll, {"overlap": "86400"})
        assert rolled.status_code == 200, rolled.text
        after = await stored()
        assert after.secret.startswith("whsec_")
        assert after.secret != first
        assert after.previous_secret == first
        expires = clock.now() + timedelta(hours=24)
        assert after.previous_secret_expires_at is not None
        assert after.previous_secret_expires_at.replace(tzinfo=UTC) == expires
        assert f'<code id="rolled-secret">{after.secret}</code>' in rolled.text
        assert f"Until {expires.strftime('%Y-%m-%d %H:%M')} UTC every delivery" in rolled.text
        assert first not in rolled.text
        listed = await phone.get("/dashboard/webhooks")
        assert after.secret not in listed.text  # shown once

        second = after.secret
        ended = await submit(phone, "/dashboard/webhooks", roll, {"overlap": "0"})
        assert ended.status_code == 200, ended.text
        after = await stored()
        assert (after.previous_secret, after.previous_secret_expires_at) == (None, None)
        assert after.secret not in (first, second)
        assert "The old secret no longer signs deliveries." in ended.text

        third = after.secret
        odd = await submit(phone, "/dashboard/webhooks", roll, {"overlap": "99"})
        assert odd.status_code == 422
        assert (
            "How long the old secret keeps signing: choose one of Stop now, 1 hour, 24 hours, "
            "7 days." in odd.text
        )
        assert (await stored()).secret == third

        # Another creator's endpoint is a 404 page; a deleted one has nothing to roll.
        other = await api.creator(email="other@example.com")
        theirs = await api.http.post(
            "/v1/webhook_endpoints",
            headers=bearer(other["secret_key"]),
            json={"url": "https://93.184.215.14/theirs", "events": ["*"]},
        )
        refused = await phone.post(
            f"/dashboard/webhooks/{theirs.json()['id']}/roll",
            data={"overlap": "0", "csrf_token": csrf_of(listed.text)},
        )
        assert refused.status_code == 404
        deleted = await api.http.delete(f"/v1/webhook_endpoints/{endpoint_id}", headers=bearer(key))
        assert deleted.status_code == 200
        gone = await phone.post(roll, data={"overlap": "0", "csrf_token": csrf_of(listed.text)})
        assert gone.status_code == 409
        assert "(https://93.184.215.14/hooks) is deleted: it signs nothing" in gone.text
        assert (await stored()).secret == third


async def test_an_endpoints_url_description_and_events_are_changed_by_form(
    api: Api, settings: Settings, database: Database, clock: FrozenClock
) -> None:
    guarded = settings.model_copy(update={"allow_private_webhook_targets": False})
    creator = await api.creator(email=SHOP)
    made = await api.http.post(
        "/v1/webhook_endpoints",
        headers=bearer(creator["secret_key"]),
        json={"url": "https://93.184.215.14/hooks", "events": ["order.paid"]},
    )
    assert made.status_code == 201, made.text
    endpoint_id, secret = made.json()["id"], made.json()["secret"]
    edit = f"/dashboard/webhooks/{endpoint_id}/edit"

    async def stored() -> tuple[str, list[str], str | None, str]:
        async with database.read() as session:
            endpoint = await session.get(WebhookEndpoint, endpoint_id)
            assert endpoint is not None
            return endpoint.url, list(endpoint.events), endpoint.description, endpoint.secret

    async with browser(guarded, database, clock) as phone:
        await _sign_in_from_outbox(phone, database, SHOP)
        listed = await phone.get("/dashboard/webhooks")
        assert f'href="{edit}"' in listed.text
        page = await phone.get(edit)
        assert page.status_code == 200
        assert 'value="https://93.184.215.14/hooks"' in page.text
        assert 'value="order.paid" checked' in page.text
        assert unlabelled_controls(page.text) == []
        token = csrf_of(page.text)

        # A private URL is refused on the form with what was typed; nothing changes.
        private = await phone.post(
            edit,
            data={
                "url": "http://127.0.0.1:9000/new",
                "events": ["order.paid", "refund.created"],
                "csrf_token": token,
            },
        )
        assert private.status_code == 400
        assert "127.0.0.1 resolves to 127.0.0.1, which is not a public address" in private.text
        assert 'value="http://127.0.0.1:9000/new"' in private.text
        assert 'value="refund.created" checked' in private.text
        unknown = await phone.post(
            edit,
            data={"url": "https://93.184.215.14/new", "events": "nope", "csrf_token": token},
        )
        assert unknown.status_code == 400
        assert "unknown event type(s) &#39;nope&#39;" in unknown.text
        none_ticked = await phone.post(
            edit, data={"url": "https://93.184.215.14/new", "csrf_token": token}
        )
        assert none_ticked.status_code == 422
        assert "event types: tick at least one (or all events)" in none_ticked.text
        assert await stored() == ("https://93.184.215.14/hooks", ["order.paid"], None, secret)

        saved = await phone.post(
            edit,
            data={
                "url": " https://93.184.215.14/new ",
                "description": "Zine club",
                "events": ["order.paid", "refund.created"],
                "csrf_token": token,
            },
        )
        assert saved.status_code == 303
        assert saved.headers["location"] == f"/dashboard/webhooks#endpoint-{endpoint_id}"
        assert await stored() == (
            "https://93.184.215.14/new",
            ["order.paid", "refund.created"],
            "Zine club",
            secret,  # the secret stays
        )
        shown = await phone.get("/dashboard/webhooks")
        assert "order.paid, refund.created · Zine club" in shown.text

        # Another creator's endpoint is a 404 page; a deleted one cannot be edited.
        other = await api.creator(email="other@example.com")
        theirs = await api.http.post(
            "/v1/webhook_endpoints",
            headers=bearer(other["secret_key"]),
            json={"url": "https://93.184.215.14/theirs", "events": ["*"]},
        )
        assert (
            await phone.get(f"/dashboard/webhooks/{theirs.json()['id']}/edit")
        ).status_code == 404
        deleted = await api.http.delete(
            f"/v1/webhook_endpoints/{endpoint_id}", headers=bearer(creator["secret_key"])
        )
        assert deleted.status_code == 200
        assert (await phone.get(edit)).status_code == 409
        gone = await phone.post(
            edit, data={"url": "https://93.184.215.14/x", "events": "*", "csrf_token": token}
        )
        assert gone.status_code == 409
        assert "was deleted and cannot be changed" in gone.text
