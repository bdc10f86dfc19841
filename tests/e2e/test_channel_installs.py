"""Installing the platform's app on a Shopify or Etsy shop through OAuth (issue 11 scope
1), against the doubles' authorize, consent and token endpoints."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.e2e.channel_stack import SHOPIFY_SECRET, Stack, channel_stack

pytestmark = pytest.mark.anyio


@pytest.fixture
async def stack(sqlite_url: str, tmp_path: Path) -> Any:
    async with channel_stack(sqlite_url, tmp_path / "var") as built:
        yield built


async def _follow_to_callback(url: str) -> str:
    """The channel's consent page approves at once: the path and query it sends the
    creator back to."""
    async with httpx.AsyncClient() as browser:
        response = await browser.get(url)
    assert response.status_code == 302, response.text
    back = urlsplit(response.headers["location"])
    return f"{back.path}?{back.query}"


async def _begin(browser: httpx.AsyncClient, url: str) -> str:
    """The creator's browser opens the install URL: Stallholder ties the install to the
    browser's session and sends it on to the channel; the channel's URL."""
    begun = await browser.get(url)
    assert begun.status_code == 303, begun.text
    return str(begun.headers["location"])


async def _install_in(browser: httpx.AsyncClient, url: str) -> str:
    """``url`` opened in ``browser`` and approved on the channel: where the channel sends
    the browser back to."""
    return await _follow_to_callback(await _begin(browser, url))


async def test_a_shopify_install_connects_the_shop_with_an_expiring_token(stack: Stack) -> None:
    _, key = await stack.creator()
    stack.shopify.shop_domain = urlsplit(stack.shopify.base_url).netloc
    stack.shopify.add_product("Mug", [("MUG-9", 3)])
    started = await stack.call(
        "GET", f"/v1/channels/oauth/shopify?shop_url={stack.shopify.base_url}", key
    )
    assert started.status_code == 200, started.text
    assert started.json()["url"].startswith(f"{stack.base}/channels/oauth/shopify/begin?ticket=")
    url = await _begin(stack.http, started.json()["url"])
    query = parse_qs(urlsplit(url).query)
    assert url.startswith(f"{stack.shopify.base_url}/admin/oauth/authorize?")
    assert query["client_id"] == ["shp-client"]
    assert query["redirect_uri"] == [f"{stack.base}/channels/oauth/shopify/callback"]

    finished = await stack.http.get(await _follow_to_callback(url))
    assert finished.status_code == 303, finished.text
    channel_id = finished.headers["location"].split("channel=", 1)[1]
    channel = (await stack.call("GET", f"/v1/channels/{channel_id}", key)).json()
    assert (channel["kind"], channel["status"], channel["url"]) == (
        "shopify",
        "active",
        stack.shopify.base_url,
    )
    assert channel["listings"] == {"matched": 0, "unmatched": 1, "conflict": 0}
    assert channel["webhooks"] == [
        "orders/create",
        "orders/cancelled",
        "inventory_levels/update",
        "app/uninstalled",
    ]


async def test_a_callback_from_another_shop_than_the_one_the_install_began_for_is_refused(
    stack: Stack,
) -> None:
    _, key = await stack.creator()
    # The double signs its callback as kiln.myshopify.com, not the address the install
    # was started for: the app's client secret must not go to that address.
    started = await stack.call(
        "GET", f"/v1/channels/oauth/shopify?shop_url={stack.shopify.base_url}", key
    )
    finished = await stack.http.get(await _install_in(stack.http, started.json()["url"]))
    # The creator's browser lands here: the problem is a page, not JSON.
    assert finished.status_code == 400
    assert "text/html" in finished.headers["content-type"]
    assert "the callback is for another shop; start again" in finished.text
    assert (await stack.call("GET", "/v1/channels", key)).json()["data"] == []


async def test_a_tampered_or_replayed_state_is_refused(stack: Stack) -> None:
    _, key = await stack.creator()
    stack.shopify.shop_domain = urlsplit(stack.shopify.base_url).netloc
    started = await stack.call(
        "GET", f"/v1/channels/oauth/shopify?shop_url={stack.shopify.base_url}", key
    )
    back = await _install_in(stack.http, started.json()["url"])
    tampered = back.replace("state=", "state=x")
    refused = await stack.http.get(tampered)
    assert refused.status_code == 400
    assert "the install link is not valid or has expired; start again" in refused.text


async def test_a_callback_in_another_browser_than_the_one_that_began_the_install_is_refused(
    stack: Stack,
) -> None:
    """A valid state is not enough: the callback must come to the browser session that
    opened the install URL (a state carried to another browser, the attacker's own
    install's callback planted in the creator's browser, is refused)."""
    _, key = await stack.creator()
    stack.shopify.shop_domain = urlsplit(stack.shopify.base_url).netloc
    started = await stack.call(
        "GET", f"/v1/channels/oauth/shopify?shop_url={stack.shopify.base_url}", key
    )
    back = await _install_in(stack.http, started.json()["url"])
    async with httpx.AsyncClient(base_url=stack.base) as other:
        # The other browser has a session of its own, with an install of its own begun.
        again = await stack.call(
            "GET", f"/v1/channels/oauth/shopify?shop_url={stack.shopify.base_url}", key
        )
        await _begin(other, again.json()["url"])
        assert other.cookies.get("stallholder_session")
        elsewhere = await other.get(back)
    async with httpx.AsyncClient(base_url=stack.base) as fresh:
        without_session = await fresh.get(back)

    for refused in (elsewhere, without_session):
        assert refused.status_code == 400
        assert "text/html" in refused.headers["content-type"]
        assert "the install was begun in another browser; start it again here" in refused.text
    assert (await stack.call("GET", "/v1/channels", key)).json()["data"] == []
    # The browser that began it finishes it.
    finished = await stack.http.get(back)
    assert finished.status_code == 303, finished.text


async def test_an_install_url_is_not_a_callback_state_nor_the_reverse(stack: Stack) -> None:
    _, key = await stack.creator()
    stack.shopify.shop_domain = urlsplit(stack.shopify.base_url).netloc
    started = await stack.call(
        "GET", f"/v1/channels/oauth/shopify?shop_url={stack.shopify.base_url}", key
    )
    ticket = parse_qs(urlsplit(started.json()["url"]).query)["ticket"][0]
    back = urlsplit(await _install_in(stack.http, started.json()["url"]))
    query = {name: values[0] for name, values in parse_qs(back.query).items()}

    as_state = await stack.http.get(back.path, params={**query, "state": ticket})
    as_ticket = await stack.http.get(
        "/channels/oauth/shopify/begin", params={"ticket": query["state"]}
    )

    assert as_state.status_code == 400
    assert "the callback does not belong to this install; start again" in as_state.text
    assert as_ticket.status_code == 400
    assert "the install link is not valid or has expired; start again" in as_ticket.text


async def test_an_etsy_install_uses_pkce_and_connects_the_shop(stack: Stack) -> None:
    _, key = await stack.creator()
    stack.etsy.add_product("Mug", [("MUG-E", 2)])
    started = await stack.call("GET", "/v1/channels/oauth/etsy?shop_id=5550001", key)
    assert started.status_code == 200, started.text
    url = await _begin(stack.http, started.json()["url"])
    query = parse_qs(urlsplit(url).query)
    assert query["code_challenge_method"] == ["S256"]
    assert "code_verifier" not in url
    finished = await stack.http.get(await _follow_to_callback(url))
    assert finished.status_code == 303, finished.text
    [channel] = (await stack.call("GET", "/v1/channels", key)).json()["data"]
    assert (channel["kind"], channel["status"], channel["name"]) == (
        "etsy",
        "active",
        "Etsy shop 5550001",
    )


async def test_an_install_needs_a_shop_address_and_the_platform_app(stack: Stack) -> None:
    _, key = await stack.creator()
    missing = await stack.call("GET", "/v1/channels/oauth/shopify", key)
    assert missing.status_code == 400
    assert "shop_url" in missing.json()["detail"]
    no_shop = await stack.call("GET", "/v1/channels/oauth/etsy?shop_id=abc", key)
    assert no_shop.status_code == 400


async def test_an_installed_shops_webhooks_must_name_that_shop(stack: Stack) -> None:
    """Every shop that installed the platform's app has its webhooks signed with the same
    client secret: a delivery signed for one shop must not count for another's channel."""
    _, key = await stack.creator()
    stack.shopify.shop_domain = urlsplit(stack.shopify.base_url).netloc
    started = await stack.call(
        "GET", f"/v1/channels/oauth/shopify?shop_url={stack.shopify.base_url}", key
    )
    finished = await stack.http.get(await _install_in(stack.http, started.json()["url"]))
    channel_id = finished.headers["location"].split("channel=", 1)[1]
    body = b'{"id": 77, "name": "#77", "created_at": "2026-11-30T10:00:00Z", "line_items": []}'
    signature = base64.b64encode(
        hmac.new(SHOPIFY_SECRET.encode(), body, hashlib.sha256).digest()
    ).decode()
    headers = {
        "X-Shopify-Topic": "orders/create",
        "X-Shopify-Hmac-Sha256": signature,
        "X-Shopify-Webhook-Id": "delivery-1",
    }
    other = await stack.http.post(
        f"/hooks/channels/{channel_id}",
        content=body,
        headers={**headers, "X-Shopify-Shop-Domain": "someone-else.myshopify.com"},
    )
    assert other.status_code == 401
    assert other.json()["detail"] == "the delivery is for another shop than this channel's"
    own = await stack.http.post(
        f"/hooks/channels/{channel_id}",
        content=body,
        headers={**headers, "X-Shopify-Shop-Domain": stack.shopify.shop_domain},
    )
    assert own.status_code == 200, own.text
