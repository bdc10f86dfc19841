"""Email rendering, retry schedule, SMTP URLs and message building: pure, no database."""

from __future__ import annotations

import smtplib
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path

import pytest

from stallholder.notifications.rendering import render
from stallholder.notifications.tasks import SEND_EMAIL, check_sender
from stallholder.notifications.transport import (
    FileTransport,
    OutgoingEmail,
    SmtpConfig,
    SmtpTransport,
    build_message,
    is_permanent_failure,
    message_id_for,
    parse_smtp_url,
    transport_for,
)

RECEIPT_CONTEXT = {
    "merchant": "Paper Lantern <Zines>",
    "number": "PAPER-LANTERN-000042",
    "order_id": "ord_123",
    "issued": date(2026, 3, 1),
    "currency": "usd",
    "lines": [
        {"description": "Riso zine", "quantity": 2, "unit_amount": 1500, "amount_total": 3000},
        {"description": "Sticker & pin", "quantity": 1, "unit_amount": 250, "amount_total": 250},
    ],
    "amount_subtotal": 3250,
    "amount_total": 3250,
    "to": "buyer@example.com",
}

RECEIPT_TEXT = """\
Receipt from Paper Lantern <Zines>

Thank you for your purchase. Keep this email as your receipt.

Receipt number: PAPER-LANTERN-000042
Date: March 1, 2026
Order: ord_123

2 × Riso zine at $15.00 each: $30.00
1 × Sticker & pin: $2.50

Total paid: $32.50

Sent on behalf of Paper Lantern <Zines> to buyer@example.com.
"""

CELL = "padding:6px 0;border-bottom:1px solid #e5e5e0"
RECEIPT_HTML = f"""\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Receipt from Paper Lantern &lt;Zines&gt;</title>
</head>
<body style="margin:0;padding:24px;background:#f4f3ef;color:#1f1f1f;\
font-family:Helvetica,Arial,sans-serif;font-size:15px;line-height:1.5">
<div style="max-width:560px;margin:0 auto;padding:32px;background:#ffffff;border-radius:8px">
<h1 style="margin:0 0 8px;font-size:22px">Receipt from Paper Lantern &lt;Zines&gt;</h1>
<p>Thank you for your purchase. Keep this email as your receipt.</p>
<p>Receipt number: <strong>PAPER-LANTERN-000042</strong><br>Date: March 1, 2026<br>\
Order: ord_123</p>
<table style="width:100%;border-collapse:collapse">
<tr><td style="{CELL}">2 × Riso zine at $15.00 each</td>\
<td style="{CELL};text-align:right">$30.00</td></tr>
<tr><td style="{CELL}">1 × Sticker &amp; pin</td>\
<td style="{CELL};text-align:right">$2.50</td></tr>
<tr><td style="padding:6px 0"><strong>Total paid</strong></td>\
<td style="padding:6px 0;text-align:right"><strong>$32.50</strong></td></tr>
</table>
</div>
<p style="max-width:560px;margin:16px auto 0;color:#6b6b6b;font-size:12px;text-align:center">\
Sent on behalf of Paper Lantern &lt;Zines&gt; to buyer@example.com.</p>
</body>
</html>
"""


def test_receipt_renders_text_and_escaped_html_exactly() -> None:
    rendered = render("receipt", RECEIPT_CONTEXT)

    assert rendered.subject == "Your receipt from Paper Lantern <Zines> [PAPER-LANTERN-000042]"
    assert rendered.text == RECEIPT_TEXT
    assert rendered.html == RECEIPT_HTML


def test_receipt_shows_a_subtotal_only_when_it_differs_from_the_total() -> None:
    rendered = render("receipt", {**RECEIPT_CONTEXT, "amount_total": 3000, "currency": "jpy"})

    assert "Subtotal: ¥3,250\nTotal paid: ¥3,000\n" in rendered.text
    assert "2 × Riso zine at ¥1,500 each: ¥3,000\n" in rendered.text


def test_refund_and_payment_failed_texts() -> None:
    refund = render(
        "refund",
        {
            "merchant": "Kiln & Clay",
            "number": "KILN-CLAY-000007",
            "refund_id": "re_1",
            "amount": 500,
            "currency": "eur",
            "order_total": 4800,
            "reason": "You asked for a refund.",
            "issued": date(2026, 3, 2),
            "to": "b@example.com",
        },
    )
    assert refund.subject == "Kiln & Clay refunded €5.00 [KILN-CLAY-000007]"
    assert refund.text == (
        "Refund from Kiln & Clay\n\n"
        "Kiln & Clay has refunded €5.00 of your order KILN-CLAY-000007 (total €48.00).\n\n"
        "Reason: You asked for a refund.\n\n"
        "Refund: re_1\nDate: March 2, 2026\n\n"
        "The money goes back to the payment method you paid with. Depending on your bank, "
        "it can take up to 10 business days to show on your statement.\n\n"
        "Sent on behalf of Kiln & Clay to b@example.com.\n"
    )
    assert "<p>Reason: You asked for a refund.</p>" in refund.html

    failed = render(
        "payment_failed",
        {
            "merchant": "Kiln & Clay",
            "amount": 4800,
            "currency": "usd",
            "failure_message": None,
            "checkout_session": "cs_1",
            "to": "b@example.com",
        },
    )
    assert failed.subject == "Your payment to Kiln & Clay did not go through"
    assert failed.text == (
        "Your payment to Kiln & Clay did not go through\n\n"
        "We could not take your payment of $48.00 to Kiln & Clay.\n\n"
        "You have not been charged. You can go back to the checkout and try again with "
        "another payment method.\n\n"
        "Reference: cs_1\n\n"
        "Sent on behalf of Kiln & Clay to b@example.com.\n"
    )


def test_a_subject_is_always_one_line() -> None:
    rendered = render("magic_link", {"merchant": "Evil\r\nBcc: x@y", "url": "u", "to": "t"})
    assert rendered.subject == "Your sign-in link for Evil Bcc: x@y"


def test_retry_schedule_backs_off_then_gives_up() -> None:
    assert [SEND_EMAIL.retry.delay(n) for n in range(0, 8)] == [
        None,
        timedelta(seconds=30),
        timedelta(minutes=2),
        timedelta(minutes=10),
        timedelta(hours=1),
        timedelta(hours=6),
        timedelta(hours=24),
        None,
    ]
    assert SEND_EMAIL.max_attempts == 7


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://localhost", SmtpConfig("localhost", 25, "plain")),
        ("smtp://127.0.0.1:2525", SmtpConfig("127.0.0.1", 2525, "plain")),
        (
            "smtp+starttls://shop%40example.com:p%40ss%3Aword@mail.example.com",
            SmtpConfig("mail.example.com", 587, "starttls", "shop@example.com", "p@ss:word"),
        ),
        ("SMTPS://u:@smtp.example.com:2465/", SmtpConfig("smtp.example.com", 2465, "tls", "u", "")),
        ("smtps://relay.example.com", SmtpConfig("relay.example.com", 465, "tls")),
    ],
)
def test_smtp_urls(url: str, expected: SmtpConfig) -> None:
    assert parse_smtp_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://mail.example.com", "unsupported SMTP URL scheme 'http'"),
        ("smtp+ssl://mail.example.com", "unsupported SMTP URL scheme 'smtp+ssl'"),
        ("mail.example.com:25", "unsupported SMTP URL scheme"),
        ("smtp://", "has no host"),
        ("smtp://mail.example.com?starttls=true", "no path, query or fragment"),
        ("smtp://mail.example.com:port", "invalid port"),
    ],
)
def test_bad_smtp_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        parse_smtp_url(url)


def test_the_password_never_shows_in_the_config_repr() -> None:
    config = parse_smtp_url("smtps://user:hunter2@mail.example.com")
    assert "hunter2" not in repr(config)


def test_transport_is_smtp_when_configured_else_eml_files(tmp_path: Path) -> None:
    smtp = transport_for(smtp_url="smtp+starttls://mail.example.com", data_dir=tmp_path)
    assert isinstance(smtp, SmtpTransport)
    assert smtp.config == SmtpConfig("mail.example.com", 587, "starttls")
    files = transport_for(smtp_url="", data_dir=tmp_path)
    assert isinstance(files, FileTransport)
    assert files.directory == tmp_path / "mail"


def test_an_invalid_sender_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an email address: 'Stallholder'"):
        check_sender("Stallholder")


OUTGOING = OutgoingEmail(
    id="em_0abc",
    to="buyer@example.com",
    subject="Your receipt from Kiln & Clay [KILN-CLAY-000001]",
    text="Thank you × 2\n",
    html="<p>Thank you &times; 2</p>\n",
    created_at=datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
)


def test_message_has_headers_and_both_parts() -> None:
    message = build_message(OUTGOING, sender="Kiln & Clay <shop@kiln.example>")

    assert message_id_for("em_0abc", "Kiln & Clay <shop@kiln.example>") == "<em_0abc@kiln.example>"
    assert {key: str(value) for key, value in message.items()} == {
        "From": "Kiln & Clay <shop@kiln.example>",
        "To": "buyer@example.com",
        "Subject": "Your receipt from Kiln & Clay [KILN-CLAY-000001]",
        "Date": "Sun, 01 Mar 2026 12:00:00 +0000",
        "Message-ID": "<em_0abc@kiln.example>",
        "Auto-Submitted": "auto-generated",
        "MIME-Version": "1.0",
        "Content-Type": 'multipart/alternative; boundary="=_em_0abc"',
    }
    parsed = message_from_bytes(message.as_bytes(), policy=default)
    assert isinstance(parsed, EmailMessage)
    parts = [
        (part.get_content_type(), part["Content-Transfer-Encoding"], part.get_content())
        for part in parsed.iter_parts()
    ]
    assert parts == [
        ("text/plain", "quoted-printable", "Thank you × 2\n"),
        ("text/html", "quoted-printable", "<p>Thank you &times; 2</p>\n"),
    ]
    # Quoted-printable: the wire form is 7-bit, whatever the text holds.
    assert message.as_bytes().isascii()
    # A resend is the same message byte for byte (the boundary comes from the email's id).
    again = build_message(OUTGOING, sender="Kiln & Clay <shop@kiln.example>")
    assert again.as_bytes() == message.as_bytes()


def test_a_subject_beyond_ascii_is_encoded_and_reads_back_the_same() -> None:
    outgoing = replace(OUTGOING, subject="Your receipt from Café Ñandú [CAFE-000001]")
    message = build_message(outgoing, sender="Café Ñandú <shop@cafe.example>")

    wire = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
    assert wire.isascii()
    parsed = message_from_bytes(wire, policy=default)
    assert (str(parsed["Subject"]), str(parsed["From"])) == (
        "Your receipt from Café Ñandú [CAFE-000001]",
        "Café Ñandú <shop@cafe.example>",
    )
    assert [part.get_content().replace("\r\n", "\n") for part in parsed.iter_parts()] == [
        "Thank you × 2\n",
        "<p>Thank you &times; 2</p>\n",
    ]


def test_recipient_refusals_with_5xx_are_permanent() -> None:
    assert is_permanent_failure(
        smtplib.SMTPRecipientsRefused({"a@example.com": (550, b"no such mailbox")})
    )
    assert not is_permanent_failure(
        smtplib.SMTPRecipientsRefused({"a@example.com": (451, b"try again later")})
    )
    assert not is_permanent_failure(ConnectionRefusedError(111, "Connection refused"))
    assert not is_permanent_failure(smtplib.SMTPAuthenticationError(535, b"bad credentials"))


@pytest.mark.anyio
async def test_eml_files_are_named_by_date_and_email_and_rewritten_on_resend(
    tmp_path: Path,
) -> None:
    transport = FileTransport(tmp_path / "mail")
    message = build_message(OUTGOING, sender="Stallholder <no-reply@localhost>")

    await transport.send(message)
    await transport.send(message)

    path = tmp_path / "mail" / "20260301T120000Z-em_0abc.eml"
    assert sorted(p.name for p in (tmp_path / "mail").iterdir()) == [path.name]
    assert path.read_bytes() == message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


def test_a_shipped_receipt_shows_the_shipping_line_and_the_address() -> None:
    rendered = render(
        "receipt",
        {
            **RECEIPT_CONTEXT,
            "amount_total": 3750,
            "shipping": {
                "display_name": "USPS <Ground>",
                "amount": 500,
                "address_lines": ["Mug Lover", "350 Fifth Avenue", "NEW YORK, NY 10118"],
            },
        },
    )
    assert (
        "Subtotal: $32.50\nShipping (USPS <Ground>): $5.00\nTotal paid: $37.50\n\n"
        "Ships to:\nMug Lover\n350 Fifth Avenue\nNEW YORK, NY 10118\n\nSent on behalf"
    ) in rendered.text
    assert '<td style="padding:6px 0">Shipping (USPS &lt;Ground&gt;)</td>' in rendered.html
    assert (
        "<p>Ships to:<br>Mug Lover<br>350 Fifth Avenue<br>NEW YORK, NY 10118</p>" in rendered.html
    )


def test_address_lines_are_escaped_in_the_html_receipt() -> None:
    shipping = {"display_name": "Post", "amount": 0, "address_lines": ["<b>Ada</b>", "1 St"]}
    rendered = render("receipt", {**RECEIPT_CONTEXT, "shipping": shipping})
    assert "<p>Ships to:<br>&lt;b&gt;Ada&lt;/b&gt;<br>1 St</p>" in rendered.html
