"""Digital delivery over HTTP, on SQLite and PostgreSQL: upload a file, attach it, buy,
get a signed link in the receipt (a real SMTP server), download the exact bytes, count
each download up to the limit; tampered and expired links refused; license keys issued
once each under concurrent purchases."""

from __future__ import annotations

import asyncio
import hashlib
import re
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from stallholder import demo
from stallholder.jobs.worker import Worker
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.ledger.service import platform_fee_policy
from stallholder.payments.config import gateway_from_settings
from stallholder.settings import Settings
from tests.conftest import T0, Api, bearer
from tests.e2e.portal_helpers import browser, sign_in
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.anyio
PROBLEM = "https://stallholder.dev/problems/"
# A small zine with a byte that is not UTF-8, so a text round trip would show.
ZINE = b"PAPER LANTERN ZINE #1\n\nHow to print with a risograph.\n\xff\x00end\n"


# The zine's link on a page (the success page, the portal's receipt).
DOWNLOAD_LINK = re.compile(r'<a href="(http://testserver/d/[^"]+)" download>zine-1.txt</a>')


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


@pytest.fixture
def mail_settings(settings: Settings, smtp: SmtpServer) -> Settings:
    return settings.model_copy(
        update={"smtp_url": f"smtp://127.0.0.1:{smtp.port}", "smtp_timeout_seconds": 5.0}
    )


async def _upload(
    api: Api, key: str, *, content: bytes = ZINE, name: str = "zine-1.txt"
) -> httpx.Response:
    return await api.http.post(
        "/v1/files",
        headers=bearer(key),
        files={"file": (name, content, "text/plain")},
    )


async def _digital_shop(api: Api) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A creator selling a digital zine with its file attached: (secret key, price, file)."""
    creator = await api.creator(listed=True)
    sk = creator["secret_key"]
    product = await api.product(sk, kind="digital", name="Riso zine (PDF)")
    price = await api.price(sk, product=product["id"], unit_amount=500)
    uploaded = await _upload(api, sk)
    assert uploaded.status_code == 201, uploaded.text
    file = uploaded.json()
    attached = await api.http.post(
        f"/v1/products/{product['id']}/files", headers=bearer(sk), json={"file": file["id"]}
    )
    assert attached.status_code == 200, attached.text
    assert [f["id"] for f in attached.json()["data"]] == [file["id"]]
    return sk, price, file


async def _buy(api: Api, sk: str, price_id: str, *, quantity: int = 1) -> httpx.Response:
    session = await api.session(sk, price=price_id, quantity=quantity)
    return await api.confirm(sk, session["id"])


async def _order(api: Api, sk: str, order_id: str) -> dict[str, Any]:
    response = await api.http.get(f"/v1/orders/{order_id}", headers=bearer(sk))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _local(url: str) -> str:
    """The path and query of a link the app made for http://testserver."""
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("http", "testserver")
    return f"{parts.path}?{parts.query}"


async def test_a_bought_file_is_delivered_by_a_signed_link_in_the_receipt(
    api: Api,
    database: Database,
    clock: FrozenClock,
    smtp: SmtpServer,
    mail_settings: Settings,
) -> None:
    sk, price, file = await _digital_shop(api)
    assert (file["filename"], file["content_type"], file["size"], file["sha256"]) == (
        "zine-1.txt",
        "text/plain",
        len(ZINE),
        hashlib.sha256(ZINE).hexdigest(),
    )
    confirmed = await _buy(api, sk, price["id"])
    assert confirmed.status_code == 200, confirmed.text
    order_id = confirmed.json()["order"]

    await Worker(database, clock, settings=mail_settings).run_once()
    [received] = smtp.received
    text = received.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert (
        "Your downloads (each link works until the date shown, up to 5 downloads per file):\n"
        "zine-1.txt (until March 8, 2026):\n"
    ) in text.replace("\r\n", "\n")
    [link] = re.findall(r"http://testserver/d/\S+", text)
    assert link.startswith(f"http://testserver/d/{order_id}/{file['id']}?expires=")
    html = received.message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert f'<a href="{link.replace("&", "&amp;")}">zine-1.txt</a>' in html

    downloaded = await api.http.get(_local(link))
    assert downloaded.status_code == 200
    assert downloaded.content == ZINE
    assert downloaded.headers["content-type"] == "text/plain"
    assert downloaded.headers["content-disposition"] == (
        "attachment; filename=\"zine-1.txt\"; filename*=UTF-8''zine-1.txt"
    )

    order = (await api.http.get(f"/v1/orders/{order_id}", headers=bearer(sk))).json()
    [download] = order["downloads"]
    assert {k: v for k, v in download.items() if k != "url"} == {
        "file": file["id"],
        "filename": "zine-1.txt",
        "content_type": "text/plain",
        "size": len(ZINE),
        "expires_at": "2026-03-08T12:00:00Z",
        "download_count": 1,
        "download_limit": 5,
    }
    assert (order["license_keys"], order["license_keys_missing"]) == ([], 0)

    # A changed signature, order or expiry is refused before anything is counted.
    query = parse_qs(urlsplit(link).query)
    forged = [
        link[:-3] + ("AAA" if not link.endswith("AAA") else "BBB"),
        link.replace(f"expires={query['expires'][0]}", f"expires={int(query['expires'][0]) + 60}"),
        link.replace(order_id, "ord_someoneelse"),
    ]
    for url in forged:
        refused = await api.http.get(_local(url))
        assert refused.status_code == 403, url
        assert refused.headers["content-type"] == "text/html; charset=utf-8"
        assert "This download link is not valid" in refused.text

    for count in range(2, 6):
        again = await api.http.get(_local(link))
        assert (again.status_code, again.content) == (200, ZINE), count
    over = await api.http.get(_local(link))
    assert over.status_code == 410
    assert "downloaded 5 times for this order" in over.text
    order = (await api.http.get(f"/v1/orders/{order_id}", headers=bearer(sk))).json()
    assert order["downloads"][0]["download_count"] == 5

    # The receipt's link expires a week after it was signed.
    clock.set(T0 + timedelta(days=7))
    expired = await api.http.get(_local(link))
    assert expired.status_code == 410
    assert "This download link has expired" in expired.text


async def test_receipts_of_one_worker_batch_each_deliver_their_own_order(
    api: Api,
    database: Database,
    clock: FrozenClock,
    smtp: SmtpServer,
    mail_settings: Settings,
) -> None:
    """The worker reads what a batch of paid orders delivers all at once: each receipt
    still shows exactly its own order's links, keys and keys owed, and a refunded order's
    receipt none."""
    sk, price, file = await _digital_shop(api)
    keyed = await api.product(sk, kind="digital", name="Brush pack licence")
    key_price = await api.price(sk, product=keyed["id"], unit_amount=900)
    added = await api.http.post(
        f"/v1/products/{keyed['id']}/license_keys", headers=bearer(sk), json={"keys": ["K-1"]}
    )
    assert added.status_code == 200, added.text
    plain = await api.product(sk, kind="digital", name="Thank-you note")
    plain_price = await api.price(sk, product=plain["id"], unit_amount=100)

    async def buy(price_id: str, email: str, quantity: int = 1) -> str:
        session = await api.session(sk, price=price_id, quantity=quantity, email=email)
        confirmed = await api.confirm(sk, session["id"])
        assert confirmed.status_code == 200, confirmed.text
        return str(confirmed.json()["order"])

    zine = await buy(price["id"], "zine@example.com")
    refunded = await buy(price["id"], "refunded@example.com")
    keys = await buy(key_price["id"], "keys@example.com", quantity=2)
    await buy(plain_price["id"], "plain@example.com")
    refund = await api.http.post("/v1/refunds", headers=bearer(sk), json={"order": refunded})
    assert refund.status_code in (200, 201), refund.text

    await Worker(database, clock, settings=mail_settings).run_once()
    texts = {
        r.rcpt_tos[0]: r.message.get_body(("plain",))  # type: ignore[union-attr]
        .get_content()
        .replace("\r\n", "\n")
        for r in smtp.received
        if r.message["Subject"].startswith("Your receipt")
    }
    assert sorted(texts) == [
        "keys@example.com",
        "plain@example.com",
        "refunded@example.com",
        "zine@example.com",
    ]
    [link] = re.findall(r"http://testserver/d/\S+", texts["zine@example.com"])
    assert link.startswith(f"http://testserver/d/{zine}/{file['id']}?expires=")
    for email in ("keys@example.com", "plain@example.com", "refunded@example.com"):
        assert "Your downloads" not in texts[email], email
    assert "Your license key:\nK-1\n" in texts["keys@example.com"]
    assert "owes you 1 more license key;" in texts["keys@example.com"]
    for email in ("plain@example.com", "refunded@example.com", "zine@example.com"):
        assert "license key" not in texts[email], email
    assert f"Order: {keys}\n" in texts["keys@example.com"]


async def test_the_link_limit_counts_each_order_on_its_own(
    api: Api, database: Database, clock: FrozenClock
) -> None:
    sk, price, _ = await _digital_shop(api)
    orders = []
    for _ in range(2):
        confirmed = await _buy(api, sk, price["id"])
        orders.append(confirmed.json()["order"])
    links = []
    for order_id in orders:
        body = (await api.http.get(f"/v1/orders/{order_id}", headers=bearer(sk))).json()
        links.append(body["downloads"][0]["url"])
    assert links[0] != links[1]
    assert (await api.http.get(_local(links[0]))).content == ZINE
    second = (await api.http.get(f"/v1/orders/{orders[1]}", headers=bearer(sk))).json()
    first = (await api.http.get(f"/v1/orders/{orders[0]}", headers=bearer(sk))).json()
    assert (first["downloads"][0]["download_count"], second["downloads"][0]["download_count"]) == (
        1,
        0,
    )
    # A link of one order does not open another's file count: the signature binds both.
    crossed = links[0].replace(orders[0], orders[1])
    assert (await api.http.get(_local(crossed))).status_code == 403

    refunded = await api.http.post("/v1/refunds", headers=bearer(sk), json={"order": orders[1]})
    assert refunded.status_code in (200, 201), refunded.text
    after_refund = await api.http.get(_local(links[1]))
    assert after_refund.status_code == 410
    assert "This order was refunded" in after_refund.text


async def test_uploads_say_what_is_wrong(api: Api, settings: Settings) -> None:
    creator = await api.creator()
    other = await api.creator(name="Other", email="other@example.com")
    sk = creator["secret_key"]
    empty = await _upload(api, sk, content=b"")
    assert (empty.status_code, empty.json()["type"]) == (400, PROBLEM + "empty-file")
    missing = await api.http.post(
        "/v1/files", headers=bearer(sk), files={"document": ("a.txt", b"x", "text/plain")}
    )
    assert (missing.status_code, missing.json()["type"]) == (400, PROBLEM + "file-required")
    too_large = await _upload(api, sk, content=b"x" * (settings.file_max_bytes + 20_000))
    assert (too_large.status_code, too_large.json()["type"]) == (413, PROBLEM + "payload-too-large")
    publishable = await _upload(api, creator["publishable_key"])
    assert publishable.status_code == 403

    theirs = (await _upload(api, other["secret_key"])).json()
    product = await api.product(sk, kind="digital", name="Zine")
    attached = await api.http.post(
        f"/v1/products/{product['id']}/files", headers=bearer(sk), json={"file": theirs["id"]}
    )
    assert (attached.status_code, attached.json()["type"]) == (404, PROBLEM + "file-not-found")
    read = await api.http.get(f"/v1/files/{theirs['id']}", headers=bearer(sk))
    assert read.status_code == 404
    mine = (await _upload(api, sk, name="../../etc/passwd")).json()
    assert mine["filename"] == "passwd"
    listed = await api.http.get("/v1/files", headers=bearer(sk))
    assert [f["id"] for f in listed.json()["data"]] == [mine["id"]]
    detached = await api.http.delete(
        f"/v1/products/{product['id']}/files/{mine['id']}", headers=bearer(sk)
    )
    assert (detached.status_code, detached.json()["type"]) == (
        404,
        PROBLEM + "file-not-attached",
    )


async def test_license_keys_are_issued_once_each_under_concurrent_purchases(api: Api) -> None:
    creator = await api.creator()
    sk = creator["secret_key"]
    product = await api.product(sk, kind="digital", name="Brush pack licence")
    price = await api.price(sk, product=product["id"], unit_amount=900)
    pool = [f"BRUSH-{n:04d}-KEY" for n in range(6)]
    added = await api.http.post(
        f"/v1/products/{product['id']}/license_keys",
        headers=bearer(sk),
        json={"keys": [*pool, pool[0]]},
    )
    assert (added.status_code, added.json()["type"]) == (400, PROBLEM + "duplicate-license-key")
    added = await api.http.post(
        f"/v1/products/{product['id']}/license_keys", headers=bearer(sk), json={"keys": pool}
    )
    assert added.json() == {
        "object": "license_key_pool",
        "product": product["id"],
        "added": 6,
        "available": 6,
        "issued": 0,
    }

    sessions = [await api.session(sk, price=price["id"]) for _ in range(7)]
    confirmed = await asyncio.gather(*(api.confirm(sk, s["id"]) for s in sessions))
    assert [c.status_code for c in confirmed] == [200] * 7
    issued: list[str] = []
    missing = 0
    orders = {}
    for response in confirmed:
        order = await _order(api, sk, response.json()["order"])
        orders[order["id"]] = order
        issued += [k["key"] for k in order["license_keys"]]
        missing += order["license_keys_missing"]
    assert sorted(issued) == pool  # every key once, none twice
    assert missing == 1

    def _keys(response: httpx.Response) -> list[dict[str, Any]]:
        keys: list[dict[str, Any]] = orders[response.json()["order"]]["license_keys"]
        return keys

    # The order owed a key gets the first key added; then a 2-unit order is owed both of
    # its keys until the next refill.
    owed = next(r for r in confirmed if not _keys(r))
    two = await _buy(api, sk, price["id"], quantity=2)
    refill = await api.http.post(
        f"/v1/products/{product['id']}/license_keys",
        headers=bearer(sk),
        json={"keys": ["BRUSH-0100-KEY", "BRUSH-0101-KEY", "BRUSH-0000-KEY"]},
    )
    assert refill.json() == {
        "object": "license_key_pool",
        "product": product["id"],
        "added": 2,
        "available": 0,
        "issued": 8,
    }
    first_owed = await _order(api, sk, owed.json()["order"])
    assert ([k["key"] for k in first_owed["license_keys"]], first_owed["license_keys_missing"]) == (
        ["BRUSH-0100-KEY"],
        0,
    )
    pair = await _order(api, sk, two.json()["order"])
    assert ([k["key"] for k in pair["license_keys"]], pair["license_keys_missing"]) == (
        ["BRUSH-0101-KEY"],
        1,
    )
    listed = await api.http.get(
        f"/v1/products/{product['id']}/license_keys", headers=bearer(sk), params={"limit": 100}
    )
    statuses = sorted(k["status"] for k in listed.json()["data"])
    assert statuses == ["issued"] * 8

    # Refunded in full, the pair's order is owed nothing more: the next key stays in the pool.
    refunded = await api.http.post(
        "/v1/refunds", headers=bearer(sk), json={"order": two.json()["order"]}
    )
    assert refunded.status_code in (200, 201), refunded.text
    last = await api.http.post(
        f"/v1/products/{product['id']}/license_keys",
        headers=bearer(sk),
        json={"keys": ["BRUSH-0102-KEY"]},
    )
    assert (last.json()["available"], last.json()["issued"]) == (1, 8)


def _mails(smtp: SmtpServer, subject_start: str) -> list[tuple[str, str, str]]:
    """(recipient, subject, plain text) of each email whose subject starts so, in order."""
    found = []
    for received in smtp.received:
        subject = str(received.message["Subject"])
        if subject.startswith(subject_start):
            body = received.message.get_body(("plain",))
            assert body is not None
            text = str(body.get_content()).replace("\r\n", "\n")
            found.append((",".join(received.rcpt_tos), subject, text))
    return found


async def test_an_owed_license_key_is_emailed_when_it_is_issued(
    api: Api,
    database: Database,
    clock: FrozenClock,
    smtp: SmtpServer,
    mail_settings: Settings,
) -> None:
    creator = await api.creator(name="Ink Fox")
    sk = creator["secret_key"]
    product = await api.product(sk, kind="digital", name="Brush pack licence")
    price = await api.price(sk, product=product["id"], unit_amount=900)
    added = await api.http.post(
        f"/v1/products/{product['id']}/license_keys", headers=bearer(sk), json={"keys": ["K-1"]}
    )
    assert added.status_code == 200, added.text
    first = await _buy(api, sk, price["id"])
    owed = await _buy(api, sk, price["id"], quantity=2)
    order_id = owed.json()["order"]
    number = (await _order(api, sk, order_id))["receipt"]["number"]
    worker = Worker(database, clock, settings=mail_settings)
    await worker.run_once()
    receipts = _mails(smtp, "Your receipt from Ink Fox")
    assert len(receipts) == 2
    assert (
        "Ink Fox owes you 2 more license keys; they will send them as soon as they can."
        in receipts[1][2]
    )
    assert _mails(smtp, "Your license key") == []

    # One key added: the order gets it now, by email, and is owed one more.
    refill = await api.http.post(
        f"/v1/products/{product['id']}/license_keys", headers=bearer(sk), json={"keys": ["K-2"]}
    )
    assert refill.json()["issued"] == 2
    events = await api.http.get(
        "/v1/events", headers=bearer(sk), params={"type": "order.license_keys_issued"}
    )
    [event] = events.json()["data"]
    assert event["data"]["object"] == {
        "object": "license_keys_issued",
        "order": order_id,
        "product": product["id"],
        "keys": ["K-2"],
        "license_keys_missing": 1,
    }
    await worker.run_once()
    assert _mails(smtp, "Your license key") == [
        (
            "buyer@example.com",
            f"Your license key from Ink Fox [{number}]",
            f"Your license key from Ink Fox\n\n"
            f"Ink Fox owed you this license key for your order {number} (Brush pack licence). "
            "Here it is:\n\nK-2\n\n"
            "Ink Fox still owes you 1 more license key; they will send it as soon as they "
            "can.\n\n"
            "Keep this email: the key is also shown on your order in the buyer portal.\n\n"
            "Sent on behalf of Ink Fox to buyer@example.com.\n",
        )
    ]

    # Two more: the last one owed is given and mailed; the other stays in the pool.
    await api.http.post(
        f"/v1/products/{product['id']}/license_keys",
        headers=bearer(sk),
        json={"keys": ["K-3", "K-4"]},
    )
    await worker.run_once()
    mailed = _mails(smtp, "Your license key")
    assert len(mailed) == 2
    assert "\n\nK-3\n\n" in mailed[1][2]
    assert "still owes" not in mailed[1][2]
    order = await _order(api, sk, order_id)
    assert ([k["key"] for k in order["license_keys"]], order["license_keys_missing"]) == (
        ["K-2", "K-3"],
        0,
    )
    # The order that got its key at sale time was never emailed again.
    assert all(first.json()["order"] not in text for _, _, text in mailed)
    # A refill with nobody owed a key emits nothing.
    await api.http.post(
        f"/v1/products/{product['id']}/license_keys", headers=bearer(sk), json={"keys": ["K-5"]}
    )
    events = await api.http.get(
        "/v1/events", headers=bearer(sk), params={"type": "order.license_keys_issued"}
    )
    assert len(events.json()["data"]) == 2


async def test_the_demo_delivers_its_mini_zine_and_a_brush_licence(
    client: httpx.AsyncClient,
    database: Database,
    settings: Settings,
    clock: FrozenClock,
) -> None:
    keys = await demo.seed(
        database,
        clock=clock,
        gateway=gateway_from_settings(settings, database=database),
        data_dir=settings.data_dir,
        fees=platform_fee_policy(settings),
        base_url=settings.base_url,
    )
    sk = keys["ink-fox"]["secret_key"]
    store = await client.get("/s/ink-fox")
    assert store.status_code == 200
    assert "Mini zine: drawing plants from life" in store.text
    orders = (await client.get("/v1/orders", headers=bearer(sk))).json()["data"]
    details = [
        (await client.get(f"/v1/orders/{order['id']}", headers=bearer(sk))).json()
        for order in orders
    ]
    by_product = {detail["line_items"][0]["description"]: detail for detail in details}
    brushes = by_product["Botanical brush pack"]
    assert [k["key"] for k in brushes["license_keys"]] == ["INKFOX-BRUSH-0001"]
    zine = by_product["Mini zine: drawing plants from life"]
    [download] = zine["downloads"]
    assert download["filename"] == "ink-fox-mini-zine.txt"
    got = await client.get(_local(download["url"]))
    assert got.content == demo.mini_zine()
    zine_page = await client.get(f"/s/ink-fox/{zine['line_items'][0]['product']}")
    size = len(demo.mini_zine())
    assert size < 1000
    assert (
        f"<li>ink-fox-mini-zine.txt ({size} bytes), a download link in your receipt</li>"
        in zine_page.text
    )
    brush_page = await client.get(f"/s/ink-fox/{brushes['line_items'][0]['product']}")
    assert "<li>A license key, in your receipt</li>" in brush_page.text
    # Seeding again changes nothing and stores no second copy.
    await demo.seed(
        database,
        clock=clock,
        gateway=gateway_from_settings(settings, database=database),
        data_dir=settings.data_dir,
        fees=platform_fee_policy(settings),
        base_url=settings.base_url,
    )
    stored = list((settings.data_dir / "files").rglob("*"))
    assert [p.name for p in stored if p.is_file()] == [download["file"]]


async def test_the_success_page_shows_the_download(api: Api) -> None:
    sk, price, file = await _digital_shop(api)
    session = await api.session(sk, price=price["id"])
    confirmed = await api.confirm(sk, session["id"])
    assert confirmed.status_code == 200, confirmed.text

    page = await api.http.get(f"/pay/{session['id']}")

    assert page.status_code == 200
    assert 'id="deliverables"' in page.text
    [link] = DOWNLOAD_LINK.findall(page.text)
    assert link.startswith(f"http://testserver/d/{confirmed.json()['order']}/{file['id']}?")
    assert "5 of 5 downloads left" in page.text
    downloaded = await api.http.get(_local(link.replace("&amp;", "&")))
    assert (downloaded.status_code, downloaded.content) == (200, ZINE)


async def test_the_portal_receipt_signs_a_fresh_download_link(
    api: Api, mail_settings: Settings, database: Database, clock: FrozenClock, smtp: SmtpServer
) -> None:
    sk, price, file = await _digital_shop(api)
    confirmed = await _buy(api, sk, price["id"])
    order_id = confirmed.json()["order"]
    clock.set(T0 + timedelta(days=10))  # the receipt's link has expired by now
    worker = Worker(database, clock, settings=mail_settings)

    async with browser(mail_settings, database, clock) as phone:
        await sign_in(phone, email="buyer@example.com", smtp=smtp, worker=worker)
        receipt = await phone.get(f"/portal/orders/{order_id}")

    assert receipt.status_code == 200
    [link] = re.findall(
        r'<a href="(http://testserver/d/[^"]+)" download>zine-1.txt</a>', receipt.text
    )
    assert link.startswith(f"http://testserver/d/{order_id}/{file['id']}?")
    downloaded = await api.http.get(_local(link.replace("&amp;", "&")))
    assert (downloaded.status_code, downloaded.content) == (200, ZINE)
