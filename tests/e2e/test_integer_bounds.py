"""Every integer field of every POST and PATCH body is bounded: 2**63 (past BIGINT) and -1
(or, where a field documents a negative minimum, as a stock adjustment's ``delta`` does,
one below it) are a 422 naming the field, never a 500. The fields come from /openapi.json,
so a field added later is covered without touching this test."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, Api, bearer

pytestmark = pytest.mark.anyio

# (method, path, body with one bad integer, the loc the 422 must name)
Case = tuple[str, str, dict[str, Any], str]


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = spec["components"]["schemas"][name]
    return schema


def _integer_paths(
    schema: dict[str, Any], spec: dict[str, Any], path: tuple[str | int, ...] = ()
) -> list[tuple[tuple[str | int, ...], int]]:
    """Where in a body of ``schema`` an integer can go, with the least value it must
    refuse: (('line_items', 0, 'quantity'), -1)."""
    schema = _resolve(schema, spec)
    if schema.get("type") == "integer":
        minimum = schema.get("minimum")
        # FastAPI's document writes bounds as numbers (-1000000000.0).
        too_small = int(minimum) - 1 if isinstance(minimum, int | float) and minimum < 0 else -1
        return [(path, too_small)]
    found: list[tuple[tuple[str | int, ...], int]] = []
    for option in schema.get("anyOf", []) + schema.get("oneOf", []) + schema.get("allOf", []):
        found += _integer_paths(option, spec, path)
    for name, child in schema.get("properties", {}).items():
        found += _integer_paths(child, spec, (*path, name))
    if schema.get("type") == "array" and "items" in schema:
        found += _integer_paths(schema["items"], spec, (*path, 0))
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        found += _integer_paths(extra, spec, (*path, "usd"))
    return list(dict.fromkeys(found))


def _body_with(path: tuple[str | int, ...], value: int) -> Any:
    if not path:
        return value
    head, *rest = path
    inner = _body_with(tuple(rest), value)
    return [inner] if isinstance(head, int) else {head: inner}


def cases(spec: dict[str, Any]) -> list[Case]:
    found: list[Case] = []
    for route, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method not in ("post", "patch"):
                continue
            content = operation.get("requestBody", {}).get("content", {})
            schema = content.get("application/json", {}).get("schema")
            if schema is None:
                continue
            url = route.replace("{", "").replace("}", "")  # any id: the body fails first
            for path, too_small in _integer_paths(schema, spec):
                loc = ".".join(str(part) for part in path)
                for value in (2**63, too_small):
                    found.append((method.upper(), url, _body_with(path, value), loc))
    return found


async def test_the_openapi_schema_has_integer_fields_to_check(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    locs = {loc for _, _, _, loc in cases(spec)}
    # A sample of what must be found, so the walk above cannot silently find nothing.
    assert {
        "platform_fee_bps",
        "line_items.0.quantity",
        "line_items.0.amount",
        "unit_amount",
        "custom_unit_amount.minimum",
        "recurring.interval_count",
        "amount",
    } <= locs


async def test_every_integer_field_refuses_2_63_and_minus_1_with_a_422_naming_it(
    api: Api,
) -> None:
    creator = await api.creator()
    spec = (await api.http.get("/openapi.json")).json()
    failures = []
    for method, url, body, loc in cases(spec):
        response = await api.http.request(
            method, url, json=body, headers=bearer(creator["secret_key"])
        )
        if response.status_code == 403 and "admin" in response.json()["type"]:
            response = await api.http.request(method, url, json=body, headers=bearer(ADMIN_KEY))
        errors = response.json().get("errors", []) if response.status_code == 422 else []
        if loc not in [error["loc"] for error in errors]:
            failures.append((method, url, body, response.status_code, response.text[:300]))
    assert failures == []
