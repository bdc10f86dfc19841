"""Portal sign-in by magic link through the ASGI app, with the link taken from a real
SMTP server (aiosmtpd): it works once, expires, and is rate-limited."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from stallholder.accounts import sign_in
from stallholder.accounts.models import SignInLink
from stallholder.jobs.worker import Worker
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.notifications.models import Email
from stallholder.settings import Settings
from tests.conftest import Api, bearer
from tests.e2e.portal_helpers import browser, csrf_of, links_in, submit
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.anyio
BUYER = "Ana@Example.com"


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


@pytest.fixture
def mail_settings(settings: Settings, smtp: SmtpServer) -> Settings:
    return settings.model_copy(
        update={"smtp_url": f"smtp://127.0.0.1:{smtp.port}", "smtp_timeout_seconds": 5.0}
    )


async def _buyer(api: Api) -> None:
    creator = await api.creator()
    made = await api.http.post(
        "/v1/customers", headers=bearer(creator["secret_key"]), json={"email": BUYER}
    )
    assert made.status_code == 201, made.text


async def test_a_magic_link_signs_in_once_and_expires(
    api: Api,
    mail_settings: Settings,
    database: Database,
    clock: FrozenClock,
    smtp: SmtpServer,
) -> None:
    await _buyer(api)
    worker = Worker(database, clock, settings=mail_settings)
    async with browser(mail_settings, database, clock) as phone:
        home = await phone.get("/portal")
        assert (home.status_code, home.headers["location"]) == (303, "/portal/sign-in")

        # A post without the form's CSRF token is refused with a page.
        forged = await phone.post("/portal/sign-in", data={"email": BUYER})
        assert forged.status_code == 403
        assert "This form has expired" in forged.text

        asked = await submit(phone, "/portal/sign-in", "/portal/sign-in", {"email": BUYER})
        assert asked.status_code == 200
        assert "a sign-in link is on its way" in asked.text
        await worker.run_once()
        [path] = links_in(smtp, "ana@example.com")
        [received] = smtp.received
        assert str(received.message["Subject"]) == "Your Stallholder sign-in link"
        body = received.message.get_body(preferencelist=("plain",))
        assert body is not None
        assert "works once and expires in 15 minutes" in str(body.get_content())

        # Opening the link signs nobody in (a mail scanner's fetch must not use it up).
        opened = await phone.get(path)
        assert opened.status_code == 200
        assert f'action="{path}"' in opened.text
        assert (await phone.get("/portal")).status_code == 303

        used = await phone.post(path, data={"csrf_token": csrf_of(opened.text)})
        assert (used.status_code, used.headers["location"]) == (303, "/portal")
        home = await phone.get("/portal")
        assert home.status_code == 200
        assert '<strong id="signed-in-as">ana@example.com</strong>' in home.text

    # The same link in another browser: used already, and the page offers a new one.
    async with browser(mail_settings, database, clock) as laptop:
        again = await submit(laptop, path, path)
        assert again.status_code == 410
        assert "it was used already (each link works once)" in again.text
        assert 'action="/portal/sign-in"' in again.text
        assert (await laptop.get("/portal")).status_code == 303

        # A new link, opened after 15 minutes: expired.
        await submit(laptop, "/portal/sign-in", "/portal/sign-in", {"email": BUYER})
        await worker.run_once()
        late_path = links_in(smtp, "ana@example.com")[-1]
        assert late_path != path
        clock.advance(sign_in.LINK_TTL + timedelta(seconds=1))
        late = await submit(laptop, late_path, late_path)
        assert late.status_code == 410
        assert "it expired (15 minutes after it was sent)" in late.text
        assert (await laptop.get("/portal")).status_code == 303

    # Tokens are stored hashed, and the sent email's body is blanked.
    async with database.unit_of_work() as session:
        hashes = (await session.execute(select(SignInLink.token_hash))).scalars().all()
        emails = (await session.execute(select(Email.text_body))).scalars().all()
    token = path.rsplit("/", 1)[1]
    assert token not in hashes
    assert len(hashes) == 2
    assert emails == ["[removed after sending]", "[removed after sending]"]


async def test_an_unknown_address_gets_the_same_answer_and_no_email(
    api: Api,
    mail_settings: Settings,
    database: Database,
    clock: FrozenClock,
    smtp: SmtpServer,
) -> None:
    await _buyer(api)
    async with browser(mail_settings, database, clock) as phone:
        asked = await submit(
            phone, "/portal/sign-in", "/portal/sign-in", {"email": "nobody@example.com"}
        )
    assert asked.status_code == 200
    assert "If <strong>nobody@example.com</strong> has bought anything here" in asked.text
    await Worker(database, clock, settings=mail_settings).run_once()
    assert smtp.received == []


async def test_sign_in_links_are_rate_limited_per_address_and_per_ip(
    api: Api,
    mail_settings: Settings,
    database: Database,
    clock: FrozenClock,
) -> None:
    await _buyer(api)
    async with browser(mail_settings, database, clock) as phone:
        for _ in range(sign_in.MAX_PER_ADDRESS):
            ok = await submit(phone, "/portal/sign-in", "/portal/sign-in", {"email": BUYER})
            assert ok.status_code == 200
        refused = await submit(phone, "/portal/sign-in", "/portal/sign-in", {"email": BUYER})
        assert refused.status_code == 429
        assert "3 sign-in links were asked for with this address in the last 15 minutes" in (
            refused.text
        )
        # Other addresses from the same IP, up to the IP's limit.
        for number in range(sign_in.MAX_PER_IP - sign_in.MAX_PER_ADDRESS):
            fields = {"email": f"other{number}@example.com"}
            ok = await submit(phone, "/portal/sign-in", "/portal/sign-in", fields)
            assert ok.status_code == 200
        busy = await submit(
            phone, "/portal/sign-in", "/portal/sign-in", {"email": "fresh@example.com"}
        )
        assert busy.status_code == 429
        assert "from this network" in busy.text
        # After the window, the address may ask again.
        clock.advance(sign_in.RATE_WINDOW)
        ok = await submit(phone, "/portal/sign-in", "/portal/sign-in", {"email": BUYER})
        assert ok.status_code == 200
    async with database.unit_of_work() as session:
        rows = (await session.execute(select(SignInLink.subject_id))).scalars().all()
    # Every request is recorded (for the limits); only the known address's can sign in.
    assert len(rows) == sign_in.MAX_PER_IP + 1
    assert sum(1 for row in rows if row is not None) == sign_in.MAX_PER_ADDRESS + 1
