"""Turning a queued email into a MIME message and handing it to a mail server, or to a
folder of ``.eml`` files when no SMTP server is configured.

SMTP URLs (``STALLHOLDER_SMTP_URL``), one scheme per kind of connection security:

- ``smtp://host[:port]``: plain SMTP, port 25 by default (a local relay or a test server);
- ``smtp+starttls://user:password@host[:port]``: upgrade with STARTTLS, port 587 by default;
  the send fails rather than continuing in clear text if the server does not offer it;
- ``smtps://user:password@host[:port]``: TLS from the first byte, port 465 by default.

User and password are optional (AUTH is used when a user is given) and percent-encoded
(``p%40ss`` for ``p@ss``). TLS certificates are verified against the system's trust store
(``SSL_CERT_FILE`` points it elsewhere).
"""

from __future__ import annotations

import asyncio
import logging
import os
import quopri
import smtplib
import ssl
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import compat32, default
from email.utils import format_datetime, parseaddr, parsedate_to_datetime
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import unquote, urlsplit

log = logging.getLogger("stallholder.notifications")

Security = Literal["plain", "starttls", "tls"]

_SCHEMES: dict[str, tuple[Security, int]] = {
    "smtp": ("plain", 25),
    "smtp+starttls": ("starttls", 587),
    "smtps": ("tls", 465),
}

DEFAULT_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str
    port: int
    security: Security
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def parse_smtp_url(url: str) -> SmtpConfig:
    """The server, port, connection security and credentials an SMTP URL names.

    Raises:
        ValueError: the scheme is not ``smtp``, ``smtp+starttls`` or ``smtps``, the host is
            missing, or the URL has a path, query or fragment.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(
            f"unsupported SMTP URL scheme {parts.scheme!r}: use smtp:// (plain), "
            "smtp+starttls:// (STARTTLS) or smtps:// (implicit TLS)"
        )
    if not parts.hostname:
        raise ValueError("the SMTP URL has no host: use e.g. smtp+starttls://user:pass@host:587")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("the SMTP URL takes no path, query or fragment")
    security, default_port = _SCHEMES[scheme]
    try:
        port = parts.port or default_port
    except ValueError as error:  # urlsplit raises on a port that is not a number
        raise ValueError(f"invalid port in the SMTP URL: {error}") from error
    return SmtpConfig(
        host=parts.hostname,
        port=port,
        security=security,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


@dataclass(frozen=True, slots=True)
class OutgoingEmail:
    """What the worker sends: everything was rendered when the email was queued."""

    id: str
    to: str
    subject: str
    text: str
    html: str
    created_at: datetime


def message_id_for(email_id: str, sender: str) -> str:
    """``<em_…@sender-domain>``: fixed for an email, so every attempt carries the same one."""
    _, address = parseaddr(sender)
    domain = address.rpartition("@")[2] or "localhost"
    return f"<{email_id}@{domain}>"


def build_message(email: OutgoingEmail, *, sender: str) -> EmailMessage:
    """A multipart/alternative message (text, then HTML) with the headers mail needs.

    ``Date`` is when the email was queued and the MIME boundary derives from the email's
    id, so a resend is the same message byte for byte.

    Headers that are plain ASCII on one line (the usual case) are written as they are,
    with ``compat32``, and the bodies quoted-printable encoded directly: the standard
    library's default policy parses every header it is given into an object, which cost
    more than the rest of sending a receipt (about 3 ms against 0.1 ms). Anything else (a
    merchant name with an accent in the subject) goes through that policy, which encodes
    it (RFC 2047).
    """
    headers = (sender, email.to, email.subject)
    if all(value.isascii() and "\r" not in value and "\n" not in value for value in headers):
        return _plain_message(email, sender=sender)
    message = EmailMessage()
    message["From"] = sender
    message["To"] = email.to
    message["Subject"] = email.subject
    message["Date"] = email.created_at
    message["Message-ID"] = message_id_for(email.id, sender)
    # RFC 3834: no vacation replies or other auto-responses to this.
    message["Auto-Submitted"] = "auto-generated"
    # Quoted-printable keeps every line 7-bit and short, whatever server relays it.
    message.set_content(email.text, cte="quoted-printable")
    message.add_alternative(email.html, subtype="html", cte="quoted-printable")
    return message


def _plain_message(email: OutgoingEmail, *, sender: str) -> EmailMessage:
    message = EmailMessage(policy=compat32)
    message["From"] = sender
    message["To"] = email.to
    message["Subject"] = email.subject
    message["Date"] = format_datetime(email.created_at)
    message["Message-ID"] = message_id_for(email.id, sender)
    message["Auto-Submitted"] = "auto-generated"
    message["MIME-Version"] = "1.0"
    # Quoted-printable bodies hold no "=_" line, so the boundary cannot occur in them.
    message["Content-Type"] = f'multipart/alternative; boundary="=_{email.id}"'
    message.set_payload([_plain_part(email.text, "plain"), _plain_part(email.html, "html")])
    return message


def _plain_part(content: str, subtype: str) -> EmailMessage:
    part = EmailMessage(policy=compat32)
    part["Content-Type"] = f'text/{subtype}; charset="utf-8"'
    part["Content-Transfer-Encoding"] = "quoted-printable"
    part.set_payload(quopri.encodestring(content.encode("utf-8")).decode("ascii"))
    return part


class Transport(Protocol):
    async def send(self, message: EmailMessage) -> None:
        """Hand the message over, or raise. Raising means it was not accepted."""
        ...


class SmtpTransport:
    """SMTP with the standard library's ``smtplib``, run in a thread.

    One connection per message: transactional volume is low, and a broken connection then
    only ever affects the one email being sent.
    """

    def __init__(
        self,
        config: SmtpConfig,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        self.timeout = timeout
        self.ssl_context = ssl_context

    async def send(self, message: EmailMessage) -> None:
        await asyncio.to_thread(self._send, message)

    def _context(self) -> ssl.SSLContext:
        return self.ssl_context or ssl.create_default_context()

    def _send(self, message: EmailMessage) -> None:
        config = self.config
        client: smtplib.SMTP
        if config.security == "tls":
            client = smtplib.SMTP_SSL(
                config.host, config.port, timeout=self.timeout, context=self._context()
            )
        else:
            client = smtplib.SMTP(config.host, config.port, timeout=self.timeout)
        with client:
            if config.security == "starttls":
                # Raises SMTPNotSupportedError when the server does not offer STARTTLS:
                # credentials and mail never go out in clear text by accident.
                client.starttls(context=self._context())
            if config.username is not None:
                client.login(config.username, config.password or "")
            client.send_message(message)


class FileTransport:
    """Writes each message to ``<directory>/<date>-<email id>.eml`` and logs the path.

    The embedded default when no SMTP server is configured, so ``make run`` shows what
    would have been sent. Sending the same message again overwrites the same file.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_for(self, message: EmailMessage) -> Path:
        sent = parsedate_to_datetime(str(message["Date"]))
        local_part = str(message["Message-ID"]).strip("<>").partition("@")[0]
        return self.directory / f"{sent:%Y%m%dT%H%M%SZ}-{local_part}.eml"

    async def send(self, message: EmailMessage) -> None:
        path = self.path_for(message)
        content = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
        await asyncio.to_thread(self._write, path, content)
        log.info("email %r to %s written to %s", str(message["Subject"]), message["To"], path)

    @staticmethod
    def _write(path: Path, content: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".eml.partial")
        partial.write_bytes(content)
        os.replace(partial, path)  # readers never see half a file


def latest_written(directory: Path, *, to: str | None = None) -> EmailMessage | None:
    """The newest ``.eml`` file ``FileTransport`` wrote under ``directory`` (to ``to``,
    case-insensitively, when given), parsed; None when there is none. For reading a sign-in
    link in the embedded default: ``stallholder mail latest --to you@example.com``."""
    if not directory.is_dir():
        return None
    # File names start with the send time (UTC, sortable); the newest is last.
    for path in sorted(directory.glob("*.eml"), reverse=True):
        message = message_from_bytes(path.read_bytes(), policy=default)
        assert isinstance(message, EmailMessage)
        if to is None or str(message["To"]).strip().lower() == to.strip().lower():
            return message
    return None


def transport_for(
    *, smtp_url: str, data_dir: Path, timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> Transport:
    """SMTP when ``smtp_url`` is set, else ``.eml`` files under ``<data_dir>/mail``.

    Raises:
        ValueError: ``smtp_url`` is not a valid SMTP URL.
    """
    if smtp_url:
        return SmtpTransport(parse_smtp_url(smtp_url), timeout=timeout)
    return FileTransport(data_dir / "mail")


def is_permanent_failure(error: BaseException) -> bool:
    """Whether retrying cannot help: the server refused the recipient with a 5xx code.

    Everything else (connection refused, timeouts, 4xx, a wrong password that an operator
    will fix) is worth retrying.
    """
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return bool(error.recipients) and all(code >= 500 for code, _ in error.recipients.values())
    return False


def sender_address(sender: str) -> Address:
    """The address part of a ``From`` value, checked. Raises ``ValueError`` when invalid."""
    name, address = parseaddr(sender)
    if "@" not in address:
        raise ValueError(f"not an email address: {sender!r}")
    username, _, domain = address.rpartition("@")
    return Address(display_name=name, username=username, domain=domain)
