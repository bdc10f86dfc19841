"""Standard Webhooks 1.0 signatures (https://www.standardwebhooks.com/): pure functions.

A secret is ``whsec_`` + base64 of random bytes; the signed content is
``{webhook-id}.{webhook-timestamp}.{body}``, HMAC-SHA256 with the decoded secret; the
``webhook-signature`` header lists ``v1,<base64 signature>`` entries separated by spaces,
one per secret that is valid right now (two during a rotation's overlap).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
SECRET_BYTES = 32


def new_webhook_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def sign(secret: str, *, message_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<signature>`` entry.

    Raises:
        ValueError: the secret is not ``whsec_`` + base64.
    """
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    content = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(
    secrets_in_use: Sequence[str], *, message_id: str, timestamp: int, body: bytes
) -> str:
    """The ``webhook-signature`` value: one entry per secret, newest first."""
    return " ".join(
        sign(secret, message_id=message_id, timestamp=timestamp, body=body)
        for secret in secrets_in_use
    )
