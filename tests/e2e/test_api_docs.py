"""The API's own documentation: /docs and /redoc load everything from the app (no outside
request, so they work offline), /openapi.json declares the keys each operation takes, and
every problem the app answers with is one the document lists for that operation."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from stallholder.settings import Settings
from tests.conftest import ADMIN_KEY, Api, bearer

pytestmark = pytest.mark.anyio

SCHEMES = {"AdminKey", "SecretKey", "PublishableKey"}
PROBLEM_CONTENT = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


async def document(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in doc["paths"].items()
        for method, operation in item.items()
    ]


@pytest.mark.parametrize(
    ("page", "assets"),
    [
        ("/docs", {".js": "javascript", ".css": "text/css", ".png": "image/png"}),
        ("/redoc", {".js": "javascript", ".png": "image/png"}),
    ],
)
async def test_the_docs_pages_load_every_asset_from_the_app_itself(
    client: httpx.AsyncClient, page: str, assets: dict[str, str]
) -> None:
    html = await client.get(page)
    assert html.status_code == 200
    assert html.headers["content-type"].startswith("text/html")
    assert "http://" not in html.text
    assert "https://" not in html.text

    referenced = re.findall(r'(?:src|href|spec-url)="([^"]+)"', html.text)
    referenced += re.findall(r"url: '([^']+)'", html.text)
    assert "/openapi.json" in referenced
    for url in referenced:
        assert url.startswith("/"), url
        loaded = await client.get(url)
        assert loaded.status_code == 200, url
        assert len(loaded.content) > 0, url
    # Each kind of asset the page needs is there, with its media type.
    for suffix, media_type in assets.items():
        urls = [url for url in referenced if url.endswith(suffix)]
        assert urls, suffix
        for url in urls:
            assert media_type in (await client.get(url)).headers["content-type"], url


async def test_swagger_ui_remembers_the_keys_and_asks_no_outside_validator(
    client: httpx.AsyncClient,
) -> None:
    html = (await client.get("/docs")).text

    assert '"persistAuthorization": true' in html
    assert '"validatorUrl": null' in html


async def test_the_three_keys_are_bearer_security_schemes(client: httpx.AsyncClient) -> None:
    schemes = (await document(client))["components"]["securitySchemes"]

    assert {name: (s["type"], s["scheme"], s["bearerFormat"]) for name, s in schemes.items()} == {
        "AdminKey": ("http", "bearer", "admin_…"),
        "SecretKey": ("http", "bearer", "sk_…"),
        "PublishableKey": ("http", "bearer", "pk_…"),
    }


async def test_each_operation_names_the_keys_it_takes(client: httpx.AsyncClient) -> None:
    doc = await document(client)

    def accepted(method: str, path: str) -> list[str] | None:
        security = doc["paths"][path][method].get("security")
        return None if security is None else [name for s in security for name in s]

    assert accepted("post", "/v1/creators") == ["AdminKey"]
    assert accepted("get", "/v1/creators") == ["AdminKey"]
    assert accepted("get", "/v1/creators/{creator_id}") == ["AdminKey", "SecretKey"]
    assert accepted("post", "/v1/creators/{creator_id}/keys/roll") == ["AdminKey", "SecretKey"]
    assert accepted("get", "/v1/products") == ["SecretKey", "PublishableKey"]
    assert accepted("post", "/v1/checkout/sessions") == ["SecretKey", "PublishableKey"]
    assert accepted("post", "/v1/products") == ["SecretKey"]
    assert accepted("get", "/v1/refunds") == ["SecretKey"]
    assert accepted("get", "/l/{link_id}") is None
    assert accepted("post", "/v1/stripe/webhooks") is None
    for method, path, operation in operations(doc):
        for requirement in operation.get("security", []):
            assert set(requirement) <= SCHEMES, (method, path)


async def test_the_keys_an_operation_names_are_the_keys_it_takes(api: Api) -> None:
    """Every list and read without a path parameter, called with each kind of key: a key
    the document names gets a 200, any other a 403, and no key a 401."""
    creator = await api.creator()
    keys = {
        "AdminKey": ADMIN_KEY,
        "SecretKey": creator["secret_key"],
        "PublishableKey": creator["publishable_key"],
    }
    doc = await document(api.http)
    reads = [
        (path, operation)
        for method, path, operation in operations(doc)
        if method == "GET" and "{" not in path and "security" in operation
    ]
    assert len(reads) == 20  # + the uploaded files, + the channels, + the drops

    for path, operation in reads:
        named = {name for requirement in operation["security"] for name in requirement}
        for scheme, key in keys.items():
            response = await api.http.get(path, headers=bearer(key))
            assert response.status_code == (200 if scheme in named else 403), (path, scheme)
            assert str(response.status_code) in operation["responses"], (path, scheme)
        assert (await api.http.get(path)).status_code == 401


async def test_every_error_response_is_a_documented_problem(client: httpx.AsyncClient) -> None:
    doc = await document(client)

    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert doc["components"]["schemas"]["Problem"]["required"] == [
        "type",
        "title",
        "status",
        "detail",
    ]
    for method, path, operation in operations(doc):
        errors = {code: r for code, r in operation["responses"].items() if int(code) >= 400}
        assert {"400", "500"} <= set(errors), (method, path)
        for code, response in errors.items():
            # Browser routes outside /v1 (/l/{link_id}) answer error pages, and problems
            # where the transport refuses before routing.
            expected = (
                PROBLEM_CONTENT
                if path.startswith("/v1")
                else {"text/html": {"schema": {"type": "string"}}, **PROBLEM_CONTENT}
            )
            assert response["content"] == expected, (method, path, code)
            assert response["description"], (method, path, code)


async def test_problems_follow_from_each_routes_shape(client: httpx.AsyncClient) -> None:
    doc = await document(client)

    def codes(method: str, path: str) -> list[str]:
        return sorted(doc["paths"][path][method]["responses"])

    # A write with a body, a secret key and an object it names.
    assert codes("post", "/v1/refunds") == [
        "201", "400", "401", "403", "404", "409", "413", "422", "500",
    ]  # fmt: skip
    # A read of one object by id.
    assert codes("get", "/v1/orders/{order_id}") == [
        "200", "400", "401", "403", "404", "422", "500",
    ]  # fmt: skip
    # A read with no parameter at all.
    assert codes("get", "/v1/balance") == ["200", "400", "401", "403", "500"]
    # A payment answers 402 besides.
    assert "402" in codes("post", "/v1/checkout/sessions/{session_id}/confirm")
    unauthenticated = doc["paths"]["/v1/orders"]["get"]["responses"]["401"]
    assert "WWW-Authenticate" in unauthenticated["headers"]
    assert (
        "`publishable-key-not-allowed`"
        in doc["paths"]["/v1/orders"]["get"]["responses"]["403"]["description"]
    )


async def test_the_middlewares_problems_are_documented_on_every_write(
    api: Api, settings: Settings
) -> None:
    """The body limit, the NUL guard and ``Idempotency-Key`` answer before any route runs;
    the statuses they answer with are in the document for every operation they reach.
    An upload's limit is the file limit, not the JSON body limit."""
    creator = await api.creator()
    sk = creator["secret_key"]
    doc = await document(api.http)
    writes = [(m, p, o) for m, p, o in operations(doc) if m in ("POST", "PATCH")]
    assert len(writes) >= 15

    for method, path, operation in writes:
        url = path.replace("{", "x_").replace("}", "")
        documented = operation["responses"]
        size = settings.file_max_bytes + 20_000 if path == "/v1/files" else 300_000
        too_large = await api.http.request(
            method, url, headers=bearer(sk), content=b"{" + b" " * size + b"}"
        )
        assert too_large.status_code == 413, (method, path)
        assert "413" in documented, (method, path)
        nul = await api.http.request(method, url + "%00", headers=bearer(sk), json={})
        assert nul.status_code == 400, (method, path)
        assert "400" in documented, (method, path)
        if method == "POST":
            bad_key = await api.http.post(
                url, headers={**bearer(sk), "Idempotency-Key": "k" * 256}, json={}
            )
            assert bad_key.json()["type"].endswith("/invalid-idempotency-key"), path
            assert "400" in documented, path
            assert "409" in documented, path
