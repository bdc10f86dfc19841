"""Email delivery against a real SMTP server (aiosmtpd) on SQLite and PostgreSQL: restarts
and crashes lose nothing, TLS and AUTH, magic links, and the creator-facing emails."""

from __future__ import annotations

import logging
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from stallholder.accounts import service as accounts
from stallholder.accounts.service import CustomerNotFound
from stallholder.checkout import service as checkout
from stallholder.events import service as events
from stallholder.events.models import Event
from stallholder.events.tasks import dispatch_events
from stallholder.jobs.worker import Worker, consumers_for
from stallholder.kit import work
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.notifications import service as notifications
from stallholder.notifications.models import Email
from stallholder.notifications.tasks import SEND_EMAIL
from stallholder.notifications.transport import SmtpTransport, Transport, parse_smtp_url
from stallholder.settings import Settings
from tests import factories
from tests.conftest import T0
from tests.smtp_server import (
    Inbox,
    SmtpServer,
    client_tls_context,
    password_checker,
    self_signed_certificate,
    server_tls_context,
)

pytestmark = pytest.mark.anyio

SENDER = "Kiln & Clay <shop@kiln.example>"


async def send_due_emails(
    database: Database, clock: FrozenClock, *, transport: Transport, sender: str
) -> int:
    """One pass of a worker that only sends email, over ``transport``."""
    settings = Settings(mail_from=sender, worker_retry_jitter=0.0)
    worker = Worker(database, clock, settings=settings, mail=transport, kinds=[SEND_EMAIL])
    return await worker.run_once()


class ProcessDied(BaseException):
    """Stands in for the process being killed: nothing after it runs, nothing catches it."""


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


@pytest.fixture
def mail_settings(settings: Settings, smtp: SmtpServer) -> Settings:
    return settings.model_copy(
        update={
            "smtp_url": f"smtp://127.0.0.1:{smtp.port}",
            "mail_from": SENDER,
            "smtp_timeout_seconds": 5.0,
        }
    )


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    made = self_signed_certificate(tmp_path)
    if made is None:
        pytest.skip("TLS tests skipped: the openssl command is needed to make a certificate")
    return made


async def _emails(database: Database) -> list[Email]:
    async with database.unit_of_work() as session:
        return list((await session.execute(select(Email).order_by(Email.id))).scalars())


async def _queue_two_magic_links(database: Database) -> tuple[str, str]:
    """A creator and two queued sign-in emails: (creator id, customer id)."""
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
        customer = await accounts.create_customer(
            session,
            creator_id=creator.id,
            email="ada@example.com",
            name="Ada",
            time_zone="Europe/London",
            now=T0,
        )
        for token in ("one", "two"):
            await notifications.queue_magic_link(
                session,
                creator_id=creator.id,
                customer_id=customer.id,
                url=f"https://shop.example/portal/sign-in?token={token}",
                now=T0,
            )
    return creator.id, customer.id


def _text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert isinstance(part, EmailMessage)
    return str(part.get_content()).replace("\r\n", "\n")


async def test_a_restart_between_queueing_and_sending_loses_nothing(
    database_url: str, clock: FrozenClock, smtp: SmtpServer, mail_settings: Settings
) -> None:
    first = Database(database_url)
    creator_id, _ = await _queue_two_magic_links(first)
    async with first.unit_of_work() as session:  # an event, dispatched but not yet sent
        await events.emit(
            session,
            creator_id=creator_id,
            type="webhook_endpoint.disabled",
            data={"id": "we_1", "object": "webhook_endpoint", "url": "https://hooks.example/a"},
            now=T0,
        )
    async with first.unit_of_work() as session:
        assert await dispatch_events(session, T0, consumers=consumers_for(mail_settings)) == 1
    await first.dispose()  # the process stops before the worker sent anything
    assert smtp.received == []

    second = Database(database_url)
    try:
        worker = Worker(second, clock, settings=mail_settings)
        await worker.run_once()
        await worker.run_once()
        emails = await _emails(second)
    finally:
        await second.dispose()

    assert sorted(str(r.message["Message-ID"]) for r in smtp.received) == sorted(
        f"<{email.id}@kiln.example>" for email in emails
    )
    assert [(e.kind, e.status, e.attempts) for e in emails] == [
        ("magic_link", "sent", 1),
        ("magic_link", "sent", 1),
        ("webhook_endpoint_disabled", "sent", 1),
    ]


async def test_a_crash_after_claiming_sends_once_when_the_lease_ends(
    database_url: str, clock: FrozenClock, smtp: SmtpServer, mail_settings: Settings
) -> None:
    first = Database(database_url)
    await _queue_two_magic_links(first)
    async with first.unit_of_work() as session:
        assert len(await work.claim(session, kind=SEND_EMAIL, now=T0)) == 2
    await first.dispose()  # died holding the lease, before sending

    second = Database(database_url)
    try:
        worker = Worker(second, clock, settings=mail_settings)
        clock.set(T0 + SEND_EMAIL.lease - timedelta(seconds=1))
        await worker.run_once()  # the periodic sweeps run; the leased emails wait
        assert smtp.received == []
        async with second.read() as session:
            leased = await work.list_work(session, now=clock.now())
        assert [(item.kind, item.state) for item in leased if item.kind == SEND_EMAIL.name] == [
            (SEND_EMAIL.name, "running")
        ] * 2
        clock.set(T0 + SEND_EMAIL.lease)
        await worker.run_once()
        await worker.run_once()
        emails = await _emails(second)
        async with second.unit_of_work() as session:
            left = await work.list_work(session, now=clock.now())
    finally:
        await second.dispose()

    assert len(smtp.received) == 2
    # One send recorded each; the work was claimed twice and is finished (deleted).
    assert [(e.status, e.attempts) for e in emails] == [("sent", 1), ("sent", 1)]
    assert left == []


async def test_a_crash_between_sending_and_recording_resends_the_same_message(
    database_url: str, clock: FrozenClock, smtp: SmtpServer, mail_settings: Settings
) -> None:
    """At least once: the server got the message but we never recorded it, so it goes again
    after the lease, with the same Message-ID and Date for clients to deduplicate."""
    first = Database(database_url)
    async with first.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
        await notifications.queue_magic_link(
            session,
            creator_id=creator.id,
            email="ada@example.com",
            url="https://s.example/t",
            now=T0,
        )

    smtp_transport = SmtpTransport(parse_smtp_url(mail_settings.smtp_url))

    class DiesAfterSending:
        async def send(self, message: EmailMessage) -> None:
            await smtp_transport.send(message)
            raise ProcessDied

    with pytest.raises(ProcessDied):
        await send_due_emails(first, clock, transport=DiesAfterSending(), sender=SENDER)
    await first.dispose()
    assert len(smtp.received) == 1

    second = Database(database_url)
    try:
        clock.set(T0 + SEND_EMAIL.lease)
        await Worker(second, clock, settings=mail_settings).run_once()
        [email] = await _emails(second)
    finally:
        await second.dispose()

    first_copy, second_copy = (r.message for r in smtp.received)
    assert str(first_copy["Message-ID"]) == str(second_copy["Message-ID"])
    assert str(first_copy["Message-ID"]) == f"<{email.id}@kiln.example>"
    assert str(first_copy["Date"]) == str(second_copy["Date"]) == "Sun, 01 Mar 2026 12:00:00 +0000"
    assert _text(first_copy) == _text(second_copy)
    assert (email.status, email.attempts, email.sent_at) == ("sent", 1, T0 + SEND_EMAIL.lease)


async def test_starttls_and_auth_against_a_server_that_requires_both(
    database: Database, clock: FrozenClock, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    server = SmtpServer(
        Inbox(),
        tls_context=server_tls_context(cert, key),
        require_starttls=True,
        auth_required=True,
        authenticator=password_checker("shop@kiln.example", "p@ss word"),
    )
    server.start()
    try:
        await _queue_two_magic_links(database)
        good = parse_smtp_url(
            f"smtp+starttls://shop%40kiln.example:p%40ss%20word@127.0.0.1:{server.port}"
        )
        bad = parse_smtp_url(f"smtp+starttls://shop%40kiln.example:wrong@127.0.0.1:{server.port}")
        tls = client_tls_context(cert)

        await send_due_emails(
            database, clock, transport=SmtpTransport(bad, ssl_context=tls), sender=SENDER
        )
        emails = await _emails(database)
        assert [(e.status, e.attempts) for e in emails] == [("pending", 1), ("pending", 1)]
        assert all((e.last_error or "").startswith("SMTPAuthenticationError(535") for e in emails)
        assert server.received == []

        clock.set(T0 + timedelta(seconds=30))
        await send_due_emails(
            database, clock, transport=SmtpTransport(good, ssl_context=tls), sender=SENDER
        )
    finally:
        server.stop()

    assert [(r.is_tls, r.is_authenticated, r.rcpt_tos) for r in server.received] == [
        (True, True, ["ada@example.com"]),
        (True, True, ["ada@example.com"]),
    ]
    assert [e.status for e in await _emails(database)] == ["sent", "sent"]


async def test_implicit_tls(
    database: Database, clock: FrozenClock, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    server = SmtpServer(Inbox(), ssl_context=server_tls_context(cert, key))
    server.start()
    try:
        await _queue_two_magic_links(database)
        transport = SmtpTransport(
            parse_smtp_url(f"smtps://127.0.0.1:{server.port}"),
            ssl_context=client_tls_context(cert),
        )
        await send_due_emails(database, clock, transport=transport, sender=SENDER)
    finally:
        server.stop()

    assert [r.is_tls for r in server.received] == [True, True]


async def test_starttls_is_never_skipped_when_the_server_does_not_offer_it(
    database: Database, clock: FrozenClock, smtp: SmtpServer
) -> None:
    await _queue_two_magic_links(database)
    transport = SmtpTransport(parse_smtp_url(f"smtp+starttls://u:secret@127.0.0.1:{smtp.port}"))

    await send_due_emails(database, clock, transport=transport, sender=SENDER)

    assert smtp.received == []
    assert [(e.status, e.last_error) for e in await _emails(database)] == [
        ("pending", "SMTPNotSupportedError('STARTTLS extension not supported by server.')"),
        ("pending", "SMTPNotSupportedError('STARTTLS extension not supported by server.')"),
    ]


async def test_auth_over_plain_smtp(database: Database, clock: FrozenClock) -> None:
    server = SmtpServer(
        Inbox(), auth_require_tls=False, authenticator=password_checker("relay", "pw")
    )
    server.start()
    try:
        await _queue_two_magic_links(database)
        transport = SmtpTransport(parse_smtp_url(f"smtp://relay:pw@127.0.0.1:{server.port}"))
        await send_due_emails(database, clock, transport=transport, sender=SENDER)
    finally:
        server.stop()

    assert [(r.is_tls, r.is_authenticated) for r in server.received] == [
        (False, True),
        (False, True),
    ]


async def test_magic_link_renders_sends_once_and_is_blanked_after_sending(
    database: Database, clock: FrozenClock, smtp: SmtpServer, mail_settings: Settings
) -> None:
    creator_id, customer_id = await _queue_two_magic_links(database)
    async with database.unit_of_work() as session:
        again = await notifications.queue_magic_link(
            session,
            creator_id=creator_id,
            customer_id=customer_id,
            url="https://shop.example/portal/sign-in?token=one",
            now=T0,
        )
        assert again is None  # the same link is never mailed twice
        with pytest.raises(ValueError, match="exactly one of customer_id and email"):
            await notifications.queue_magic_link(
                session, creator_id=creator_id, url="https://x.example", now=T0
            )
        other = await factories.create_creator(session, now=T0, name="Someone Else")
        with pytest.raises(CustomerNotFound):
            await notifications.queue_magic_link(
                session, creator_id=other.id, customer_id=customer_id, url="https://y", now=T0
            )

    await Worker(database, clock, settings=mail_settings).run_once()

    first, _ = smtp.received
    assert str(first.message["Subject"]) == "Your sign-in link for Kiln & Clay"
    assert _text(first.message) == (
        "Sign in to Kiln & Clay\n\n"
        "Use this link to sign in and see your orders and subscriptions with Kiln & Clay:\n\n"
        "https://shop.example/portal/sign-in?token=one\n\n"
        "The link works once and expires soon. If you did not ask to sign in, you can ignore "
        "this email: nobody can sign in without the link.\n\n"
        "Sent on behalf of Kiln & Clay to ada@example.com.\n"
    )
    html = first.message.get_body(preferencelist=("html",))
    assert isinstance(html, EmailMessage)
    assert '<a href="https://shop.example/portal/sign-in?token=one"' in html.get_content()
    emails = await _emails(database)
    assert [(e.status, e.text_body, e.html_body) for e in emails] == [
        ("sent", notifications.REDACTED, notifications.REDACTED),
        ("sent", notifications.REDACTED, notifications.REDACTED),
    ]


async def test_a_disabled_webhook_endpoint_emails_the_creator(
    database: Database, clock: FrozenClock, smtp: SmtpServer, mail_settings: Settings
) -> None:
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
        await events.emit(
            session,
            creator_id=creator.id,
            type="webhook_endpoint.disabled",
            data={
                "id": "we_123",
                "object": "webhook_endpoint",
                "url": "https://hooks.kiln.example/stallholder",
                "status": "disabled",
                "disabled_reason": "every delivery failed for 3 days",
            },
            now=T0,
        )

    await Worker(database, clock, settings=mail_settings).run_once()

    [received] = smtp.received
    assert received.rcpt_tos == ["studio@example.com"]
    assert str(received.message["Subject"]) == (
        "Webhook endpoint disabled: https://hooks.kiln.example/stallholder"
    )
    assert _text(received.message) == (
        "Webhook endpoint disabled\n\n"
        "Hello Kiln & Clay,\n\n"
        "Stallholder has stopped sending events to your webhook endpoint we_123:\n\n"
        "https://hooks.kiln.example/stallholder\n\n"
        "Why: every delivery failed for 3 days\n\n"
        "Events are not lost: they stay in your event log (GET /v1/events) while the endpoint "
        "is disabled. To receive them again, make sure the URL answers with a 2xx status, then "
        "re-enable the endpoint:\n\n"
        'PATCH /v1/webhook_endpoints/we_123 with {"status": "enabled"}\n\n'
        "Sent to studio@example.com, the contact address of Kiln & Clay.\n"
    )


async def test_a_failed_payment_without_an_email_address_is_skipped_and_logged(
    database: Database, clock: FrozenClock, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
        price = await factories.create_price(session, creator_id=creator.id, now=T0)
        anonymous = await checkout.create_session(
            session,
            creator_id=creator.id,
            customer_id=None,
            customer_email=None,
            lines=[checkout.LineRequest(price_id=price.id, quantity=1)],
            success_url=None,
            cancel_url=None,
            ttl=timedelta(minutes=30),
            now=T0,
        )
        await events.emit(
            session,
            creator_id=creator.id,
            type="payment.failed",
            data={"id": "pay_1", "checkout_session": anonymous.id, "amount": 4800},
            now=T0,
        )

    with caplog.at_level(logging.INFO, logger="stallholder.notifications"):
        await Worker(database, clock, settings=settings).run_once()

    assert await _emails(database) == []
    assert (
        f"payment pay_1 failed but checkout session {anonymous.id} has no email address; "
        "no email sent"
    ) in caplog.messages


async def test_a_malformed_endpoint_payload_is_logged_and_does_not_hold_up_the_outbox(
    database: Database, clock: FrozenClock, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
        event = await events.emit(
            session,
            creator_id=creator.id,
            type="webhook_endpoint.disabled",
            data={"id": "we_1"},
            now=T0,
        )

    await Worker(database, clock, settings=settings).run_once()

    assert await _emails(database) == []
    assert f"event {event.id} has no endpoint id or url; no email sent: {{'id': 'we_1'}}" in (
        caplog.messages
    )
    async with database.unit_of_work() as session:
        dispatched = await session.get(Event, event.id)
        assert dispatched is not None
        assert dispatched.dispatched_at == T0


async def test_in_one_batch_each_email_keeps_its_own_outcome(
    database: Database, clock: FrozenClock, smtp: SmtpServer, mail_settings: Settings
) -> None:
    """Emails are sent and recorded a batch at a time: one that fails for now is retried
    on its schedule, one refused for good is failed at once, and the rest are sent."""
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
        for who in ("later", "never", "now"):
            await notifications.queue_magic_link(
                session,
                creator_id=creator.id,
                email=f"{who}@example.com",
                url=f"https://s.example/{who}",
                now=T0,
            )
    smtp.inbox.refused.add("never@example.com")
    smtp_transport = SmtpTransport(parse_smtp_url(mail_settings.smtp_url))

    class DownFor:
        """The server is unreachable for one recipient's message."""

        def __init__(self, to: str) -> None:
            self.to = to

        async def send(self, message: EmailMessage) -> None:
            if str(message["To"]) == self.to:
                raise ConnectionRefusedError("connection refused")
            await smtp_transport.send(message)

    assert (
        await send_due_emails(
            database, clock, transport=DownFor("later@example.com"), sender=SENDER
        )
        == 3
    )
    by_address = {e.to_address: e for e in await _emails(database)}
    assert [
        (by_address[a].status, by_address[a].attempts)
        for a in ("later@example.com", "never@example.com", "now@example.com")
    ] == [("pending", 1), ("failed", 1), ("sent", 1)]
    assert by_address["later@example.com"].last_error == (
        "ConnectionRefusedError('connection refused')"
    )
    assert [str(r.message["To"]) for r in smtp.received] == ["now@example.com"]
    async with database.unit_of_work() as session:
        waiting = await work.list_work(session, now=T0 + timedelta(days=3))
    assert sorted((w.state, w.attempts, w.due_at) for w in waiting) == [
        ("dead", 1, T0 + SEND_EMAIL.lease),  # dead where its lease left it
        ("pending", 1, T0 + notifications.RETRY_DELAYS[0]),
    ]

    clock.set(T0 + notifications.RETRY_DELAYS[0])
    assert await send_due_emails(database, clock, transport=smtp_transport, sender=SENDER) == 1
    by_address = {e.to_address: e for e in await _emails(database)}
    assert (by_address["later@example.com"].status, by_address["later@example.com"].attempts) == (
        "sent",
        2,
    )
    assert sorted(str(r.message["To"]) for r in smtp.received) == [
        "later@example.com",
        "now@example.com",
    ]
