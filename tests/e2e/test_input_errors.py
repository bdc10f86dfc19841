"""Who may touch what, and malformed input: exact statuses and problem types, and a fuzz
of junk bodies against every POST route that must never produce a 500."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import ADMIN_KEY, Api, bearer
from tests.e2e.test_errors import problem

pytestmark = pytest.mark.anyio


async def _sold(api: Api) -> dict[str, Any]:
    """Creator A with a product, price, customer, completed session and order."""
    creator, price = await api.shop()
    sk = creator["secret_key"]
    session = await api.session(sk, price=price["id"])
    order = (await api.confirm(sk, session["id"])).json()["order"]
    customer = await api.http.post(
        "/v1/customers", headers=bearer(sk), json={"email": "c@example.com"}
    )
    return {
        "creator": creator,
        "product": price["product"],
        "price": price["id"],
        "session": session["id"],
        "order": order,
        "customer": customer.json()["id"],
    }


async def test_another_creator_gets_404s_never_403s_and_changes_nothing(api: Api) -> None:
    a = await _sold(api)
    b = await api.creator(name="Bea", email="bea@example.com")
    as_b = bearer(b["secret_key"])
    calls = [
        ("GET", f"/v1/products/{a['product']}", None, "product-not-found"),
        ("PATCH", f"/v1/products/{a['product']}", {"name": "mine"}, "product-not-found"),
        ("GET", f"/v1/prices/{a['price']}", None, "price-not-found"),
        ("PATCH", f"/v1/prices/{a['price']}", {"active": False}, "price-not-found"),
        ("GET", f"/v1/checkout/sessions/{a['session']}", None, "checkout-session-not-found"),
        (
            "POST",
            f"/v1/checkout/sessions/{a['session']}/confirm",
            {"payment_method": "tok_visa"},
            "checkout-session-not-found",
        ),
        ("GET", f"/v1/orders/{a['order']}", None, "order-not-found"),
        ("POST", "/v1/refunds", {"order": a["order"], "amount": 100}, "order-not-found"),
        ("GET", f"/v1/customers/{a['customer']}", None, "customer-not-found"),
        ("GET", f"/v1/creators/{a['creator']['id']}", None, "creator-not-found"),
    ]
    for method, path, body, slug in calls:
        response = await api.http.request(method, path, headers=as_b, json=body)
        assert problem(response) == (404, slug), (method, path)

    # In a line item another creator's price reads exactly like one that does not exist.
    def line(price: str) -> dict[str, Any]:
        return {"line_items": [{"price": price, "quantity": 1}], "customer_email": "x@y.io"}

    foreign = await api.http.post("/v1/checkout/sessions", headers=as_b, json=line(a["price"]))
    missing = await api.http.post("/v1/checkout/sessions", headers=as_b, json=line("price_nope"))
    assert problem(foreign) == problem(missing) == (400, "price-not-purchasable")
    assert foreign.json()["detail"] == missing.json()["detail"].replace("price_nope", a["price"])

    sk = a["creator"]["secret_key"]
    order = await api.http.get(f"/v1/orders/{a['order']}", headers=bearer(sk))
    price = await api.http.get(f"/v1/prices/{a['price']}", headers=bearer(sk))
    assert (order.json()["status"], price.json()["active"]) == ("paid", True)


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Bearer sk_not_a_real_key", "Basic dXNlcjpwYXNz", "sk_x"],
)
async def test_no_or_a_bad_key_is_a_401(api: Api, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in (("GET", "/v1/products"), ("POST", "/v1/products"), ("GET", "/v1/balance")):
        response = await api.http.request(method, path, headers=headers, json={})
        assert problem(response) == (401, "unauthenticated"), (authorization, path)
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_publishable_key_may_start_a_checkout_and_nothing_that_changes_the_store(
    api: Api,
) -> None:
    a = await _sold(api)
    pk = bearer(a["creator"]["publishable_key"])
    started = await api.http.post(
        "/v1/checkout/sessions",
        headers=pk,
        json={"line_items": [{"price": a["price"], "quantity": 1}], "customer_email": "b@x.io"},
    )
    assert started.status_code == 201
    for method, path, body in (
        ("POST", "/v1/products", {"kind": "digital", "name": "x"}),
        ("POST", "/v1/refunds", {"order": a["order"]}),
        ("GET", f"/v1/orders/{a['order']}", None),
        ("GET", "/v1/balance", None),
        ("POST", "/v1/customers", {"email": "x@example.com"}),
    ):
        response = await api.http.request(method, path, headers=pk, json=body)
        assert problem(response) == (403, "publishable-key-not-allowed"), path
    creators = await api.http.post(
        "/v1/creators", headers=pk, json={"display_name": "x", "email": "x@example.com"}
    )
    assert problem(creators) == (403, "admin-key-required")


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/v1/prices", {"unit_amount": 10.5, "currency": "usd"}, "unit_amount"),
        ("/v1/prices", {"unit_amount": "1000", "currency": "usd"}, "unit_amount"),
        ("/v1/prices", {"unit_amount": -1, "currency": "usd"}, "unit_amount"),
        ("/v1/prices", {"unit_amount": 10**15, "currency": "usd"}, "unit_amount"),
        ("/v1/prices", {"unit_amount": 100, "currency": "xyz"}, "currency"),
        ("/v1/prices", {"unit_amount": 100, "currency": "usd", "colour": "red"}, "colour"),
        ("/v1/products", {"kind": "spaceship", "name": "x"}, "kind"),
        ("/v1/products", {"kind": "digital", "name": ""}, "name"),
        ("/v1/customers", {"email": "not-an-email"}, "email"),
        ("/v1/customers", {"email": "a@example.com", "time_zone": "Mars/Base"}, "time_zone"),
        ("/v1/checkout/sessions", {"line_items": [], "customer_email": "b@x.io"}, "line_items"),
        (
            "/v1/checkout/sessions",
            {"line_items": [{"price": "price_x", "quantity": 0}], "customer_email": "b@x.io"},
            "line_items.0.quantity",
        ),
        (
            "/v1/checkout/sessions",
            {"line_items": [{"price": "price_x", "quantity": -2}], "customer_email": "b@x.io"},
            "line_items.0.quantity",
        ),
        (
            "/v1/checkout/sessions",
            {"line_items": [{"price": "price_x", "quantity": 1.5}], "customer_email": "b@x.io"},
            "line_items.0.quantity",
        ),
        ("/v1/refunds", {"order": "ord_x", "amount": 1.25}, "amount"),
        ("/v1/refunds", {"order": "ord_x", "amount": 0}, "amount"),
        ("/v1/customers", {"email": "a@example.com", "name": "A\u0000"}, "name"),
    ],
)
async def test_malformed_fields_are_a_422_that_names_the_field(
    api: Api, path: str, body: dict[str, Any], loc: str
) -> None:
    creator, price = await api.shop()
    if path == "/v1/prices":
        body = {"product": price["product"], **body}
    response = await api.http.post(path, headers=bearer(creator["secret_key"]), json=body)
    assert problem(response) == (422, "validation-error")
    assert loc in [error["loc"] for error in response.json()["errors"]], response.json()


async def test_a_pay_what_you_want_amount_below_the_minimum_is_refused(api: Api) -> None:
    creator = await api.creator()
    sk = creator["secret_key"]
    product = await api.product(sk, kind="digital")
    price = await api.price(
        sk,
        product=product["id"],
        unit_amount=None,
        custom_unit_amount={"minimum": 300},
    )
    response = await api.http.post(
        "/v1/checkout/sessions",
        headers=bearer(sk),
        json={
            "line_items": [{"price": price["id"], "quantity": 1, "amount": 299}],
            "customer_email": "b@x.io",
        },
    )
    assert problem(response) == (400, "invalid-line-item")
    assert "300" in response.json()["detail"]


async def test_an_oversized_or_unparseable_body_is_refused_before_anything_runs(
    api: Api,
) -> None:
    creator = await api.creator()
    headers = {**bearer(creator["secret_key"]), "Content-Type": "application/json"}
    huge = b'{"kind": "digital", "name": "' + b"x" * (300 * 1024) + b'"}'
    too_large = await api.http.post("/v1/products", headers=headers, content=huge)
    broken = await api.http.post("/v1/products", headers=headers, content=b'{"kind": "dig')
    as_form = await api.http.post(
        "/v1/products", headers=bearer(creator["secret_key"]), data={"kind": "digital"}
    )
    assert problem(too_large) == (413, "payload-too-large")
    assert problem(broken) == (400, "malformed-json")
    assert as_form.status_code in (400, 422)
    problem(as_form)
    listed = await api.http.get("/v1/products", headers=bearer(creator["secret_key"]))
    assert listed.json()["data"] == []


BAD_ADDRESSES = [
    "buyer\r\n@example.com",
    "buyer@example.com\r\nBcc: everyone@example.com",
    "buy\ter@example.com",
    "a@b@example.com",
    "not-an-email",
    "a@localhost",
    "bücher@example.com",
]


@pytest.mark.parametrize("address", BAD_ADDRESSES)
async def test_every_address_that_enters_the_api_is_validated(api: Api, address: str) -> None:
    creator, price = await api.shop()
    sk = creator["secret_key"]
    line = {"price": price["id"], "quantity": 1}
    attempts = [
        ("/v1/creators", ADMIN_KEY, {"display_name": "X", "email": address}, "email"),
        ("/v1/customers", sk, {"email": address}, "email"),
        (
            "/v1/checkout/sessions",
            sk,
            {"line_items": [line], "customer_email": address},
            "customer_email",
        ),
    ]
    for path, key, body, loc in attempts:
        response = await api.http.post(path, headers=bearer(key), json=body)
        assert problem(response) == (422, "validation-error"), (path, response.text)
        assert [e["loc"] for e in response.json()["errors"]] == [loc]
        assert response.json()["errors"][0]["msg"].startswith("not an email address")

    opened = await api.http.post(
        "/v1/checkout/sessions", headers=bearer(sk), json={"line_items": [line]}
    )
    confirm = await api.http.post(
        f"/v1/checkout/sessions/{opened.json()['id']}/confirm",
        headers=bearer(sk),
        json={"payment_method": "tok_visa", "customer_email": address},
    )
    assert problem(confirm) == (422, "validation-error")
    orders = await api.http.get("/v1/orders", headers=bearer(sk))
    assert orders.json()["data"] == []


async def test_addresses_are_stored_with_a_lower_case_ascii_domain(api: Api) -> None:
    creator = await api.creator(email="Studio@Example.COM")
    customer = await api.http.post(
        "/v1/customers",
        headers=bearer(creator["secret_key"]),
        json={"email": "  Ada@BÜCHER.example  "},
    )
    assert (creator["email"], customer.json()["email"]) == (
        "Studio@example.com",
        "Ada@xn--bcher-kva.example",
    )
