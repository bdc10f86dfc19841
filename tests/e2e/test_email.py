"""Transactional email end to end: a sale over HTTP, the worker, and a real SMTP server
(aiosmtpd) receiving the messages; on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from typing import Any

import pytest
from sqlalchemy import select, update

from stallholder.events.models import Event
from stallholder.jobs.worker import Worker
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.kit.work import WorkItem
from stallholder.notifications.models import Email
from stallholder.notifications.rendering import render
from stallholder.settings import Settings
from tests.conftest import T0, Api, bearer
from tests.smtp_server import Received, SmtpServer

pytestmark = pytest.mark.anyio


async def _send_work(database: Database) -> tuple[str, int, datetime]:
    """The one email's work item: (state, attempts, due at)."""
    async with database.unit_of_work() as session:
        sending = select(WorkItem).where(WorkItem.kind == "notifications.send_email")
        [item] = (await session.execute(sending)).scalars().all()
    return item.state, item.attempts, item.due_at


SENDER = "Stallholder Receipts <receipts@shop.example>"


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


async def _emails(database: Database) -> list[Email]:
    async with database.unit_of_work() as session:
        return list((await session.execute(select(Email).order_by(Email.id))).scalars())


def _parts(message: EmailMessage) -> list[tuple[str, str]]:
    """(content type, content) of each part; line endings as written (SMTP carries CRLF)."""
    assert message.get_content_type() == "multipart/alternative"
    return [
        (part.get_content_type(), part.get_content().replace("\r\n", "\n"))
        for part in message.iter_parts()
    ]


def _headers(received: Received) -> dict[str, str]:
    names = ("From", "To", "Subject", "Date", "Message-ID", "Auto-Submitted")
    return {name: str(received.message[name]) for name in names}


async def _sale(api: Api, *, quantity: int = 2) -> tuple[str, dict[str, Any]]:
    """A creator and a paid order: (secret key, order)."""
    creator, price = await api.shop(unit_amount=1500)
    sk = creator["secret_key"]
    session = await api.session(sk, price=price["id"], quantity=quantity)
    confirmed = await api.confirm(sk, session["id"])
    assert confirmed.status_code == 200, confirmed.text
    order = await api.http.get(f"/v1/orders/{confirmed.json()['order']}", headers=bearer(sk))
    return sk, order.json()


async def test_a_sale_sends_the_buyer_a_receipt_once(
    api: Api, database: Database, clock: FrozenClock, smtp: SmtpServer, mail_settings: Settings
) -> None:
    _, order = await _sale(api)
    worker = Worker(database, clock, settings=mail_settings)

    await worker.run_once()  # dispatches order.paid (queues the receipt), then sends it

    [email] = await _emails(database)
    assert (email.kind, email.status, email.attempts, email.sent_at) == ("receipt", "sent", 1, T0)
    assert email.message_id == f"<{email.id}@shop.example>"
    [received] = smtp.received
    assert (received.mail_from, received.rcpt_tos) == (
        "receipts@shop.example",
        ["buyer@example.com"],
    )
    assert _headers(received) == {
        "From": SENDER,
        "To": "buyer@example.com",
        "Subject": "Your receipt from Paper Lantern Zines [PAPER-LANTERN-ZINES-000001]",
        "Date": "Sun, 01 Mar 2026 12:00:00 +0000",
        "Message-ID": f"<{email.id}@shop.example>",
        "Auto-Submitted": "auto-generated",
    }
    text = (
        "Receipt from Paper Lantern Zines\n\n"
        "Thank you for your purchase. Keep this email as your receipt.\n\n"
        "Receipt number: PAPER-LANTERN-ZINES-000001\n"
        "Date: March 1, 2026\n"
        f"Order: {order['id']}\n\n"
        "2 × Riso zine at $15.00 each: $30.00\n\n"
        "Total paid: $30.00\n\n"
        "Sent on behalf of Paper Lantern Zines to buyer@example.com.\n"
    )
    html = render(
        "receipt",
        {
            "merchant": "Paper Lantern Zines",
            "number": "PAPER-LANTERN-ZINES-000001",
            "order_id": order["id"],
            "issued": date(2026, 3, 1),
            "currency": "usd",
            "lines": [
                {
                    "description": "Riso zine",
                    "quantity": 2,
                    "unit_amount": 1500,
                    "amount_total": 3000,
                }
            ],
            "amount_subtotal": 3000,
            "amount_total": 3000,
            "to": "buyer@example.com",
        },
    ).html
    assert _parts(received.message) == [("text/plain", text), ("text/html", html)]

    # Running again, or dispatching the same event again, sends nothing new.
    clock.set(T0 + timedelta(days=1))
    await worker.run_once()
    async with database.unit_of_work() as session:
        await session.execute(update(Event).values(dispatched_at=None))
    await worker.run_once()
    assert len(smtp.received) == 1
    assert [e.id for e in await _emails(database)] == [email.id]


async def test_a_decline_and_a_refund_email_the_buyer(
    api: Api, database: Database, clock: FrozenClock, smtp: SmtpServer, mail_settings: Settings
) -> None:
    creator, price = await api.shop(unit_amount=1500)
    sk = creator["secret_key"]
    session = await api.session(sk, price=price["id"], quantity=2, email="ada@example.com")
    assert (await api.confirm(sk, session["id"], "tok_chargeDeclined")).status_code == 402
    order_id = (await api.confirm(sk, session["id"])).json()["order"]
    refund = await api.http.post(
        "/v1/refunds",
        headers=bearer(sk),
        json={"order": order_id, "amount": 500, "reason": "requested_by_customer"},
    )
    assert refund.status_code == 201, refund.text

    await Worker(database, clock, settings=mail_settings).run_once()

    assert [(r.rcpt_tos, str(r.message["Subject"])) for r in smtp.received] == [
        (["ada@example.com"], "Your payment to Paper Lantern Zines did not go through"),
        (["ada@example.com"], "Your receipt from Paper Lantern Zines [PAPER-LANTERN-ZINES-000001]"),
        (["ada@example.com"], "Paper Lantern Zines refunded $5.00 [PAPER-LANTERN-ZINES-000001]"),
    ]
    declined, _, refunded = smtp.received
    assert _parts(declined.message)[0] == (
        "text/plain",
        "Your payment to Paper Lantern Zines did not go through\n\n"
        "We could not take your payment of $30.00 to Paper Lantern Zines: "
        "The card was declined.\n\n"
        "You have not been charged. You can go back to the checkout and try again with "
        "another payment method.\n\n"
        f"Reference: {session['id']}\n\n"
        "Sent on behalf of Paper Lantern Zines to ada@example.com.\n",
    )
    assert _parts(refunded.message)[0] == (
        "text/plain",
        "Refund from Paper Lantern Zines\n\n"
        "Paper Lantern Zines has refunded $5.00 of your order PAPER-LANTERN-ZINES-000001 "
        "(total $30.00).\n\n"
        "Reason: You asked for a refund.\n\n"
        f"Refund: {refund.json()['id']}\n"
        "Date: March 1, 2026\n\n"
        "The money goes back to the payment method you paid with. Depending on your bank, "
        "it can take up to 10 business days to show on your statement.\n\n"
        "Sent on behalf of Paper Lantern Zines to ada@example.com.\n",
    )
    for received in smtp.received:
        [(_, text), (html_type, html)] = _parts(received.message)
        assert html_type == "text/html"
        assert html.startswith("<!DOCTYPE html>\n")
        assert text.splitlines()[0] in html  # the heading is in both parts
    assert [e.status for e in await _emails(database)] == ["sent", "sent", "sent"]


async def test_smtp_down_is_retried_with_backoff_and_sent_once_when_back(
    api: Api, database: Database, clock: FrozenClock, smtp: SmtpServer, mail_settings: Settings
) -> None:
    await _sale(api)
    smtp.stop()
    worker = Worker(database, clock, settings=mail_settings)

    await worker.run_once()
    [email] = await _emails(database)
    assert (email.status, email.attempts) == ("pending", 1)
    assert await _send_work(database) == ("pending", 1, T0 + timedelta(seconds=30))
    assert email.last_error is not None
    assert email.last_error.startswith("ConnectionRefusedError(")

    clock.set(T0 + timedelta(seconds=29))  # not due yet (only the periodic sweeps run)
    await worker.run_once()
    assert await _send_work(database) == ("pending", 1, T0 + timedelta(seconds=30))
    clock.set(T0 + timedelta(seconds=30))  # due, server still down
    await worker.run_once()
    [email] = await _emails(database)
    assert email.attempts == 2
    assert await _send_work(database) == ("pending", 2, T0 + timedelta(seconds=150))

    smtp.start()
    clock.set(T0 + timedelta(seconds=150))
    await worker.run_once()
    await worker.run_once()

    [email] = await _emails(database)
    assert (email.status, email.attempts, email.sent_at, email.last_error) == (
        "sent",
        3,
        T0 + timedelta(seconds=150),
        None,
    )
    assert [str(r.message["Message-ID"]) for r in smtp.received] == [f"<{email.id}@shop.example>"]


async def test_a_recipient_the_server_refuses_fails_at_once(
    api: Api, database: Database, clock: FrozenClock, smtp: SmtpServer, mail_settings: Settings
) -> None:
    smtp.inbox.refused.add("buyer@example.com")
    await _sale(api)

    await Worker(database, clock, settings=mail_settings).run_once()

    [email] = await _emails(database)
    assert (email.status, email.attempts) == ("failed", 1)
    assert email.last_error is not None
    assert "550" in email.last_error
    assert smtp.received == []


async def test_without_smtp_each_email_is_an_eml_file_under_the_data_dir(
    api: Api,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert settings.smtp_url == ""
    await _sale(api)

    with caplog.at_level(logging.INFO, logger="stallholder.notifications"):
        await Worker(database, clock, settings=settings).run_once()

    [email] = await _emails(database)
    path = settings.data_dir / "mail" / f"20260301T120000Z-{email.id}.eml"
    assert sorted((settings.data_dir / "mail").iterdir()) == [path]
    assert (
        f"email 'Your receipt from Paper Lantern Zines [PAPER-LANTERN-ZINES-000001]' to "
        f"buyer@example.com written to {path}"
    ) in caplog.messages
    message = message_from_bytes(path.read_bytes(), policy=default)
    assert isinstance(message, EmailMessage)
    assert (str(message["From"]), str(message["To"]), str(message["Message-ID"])) == (
        "Stallholder <no-reply@localhost>",
        "buyer@example.com",
        f"<{email.id}@localhost>",
    )
    assert _parts(message) == [("text/plain", email.text_body), ("text/html", email.html_body)]
    assert email.status == "sent"
