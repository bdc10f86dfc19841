"""Signed, expiring download links: pure functions (docs/digital-delivery.md).

A link names an order, a file and an expiry (a Unix time); its signature is HMAC-SHA256,
under the platform's download signing key, over ``v1:{order}:{file}:{expires}``, in
URL-safe base64 without padding. Changing any part of the link, or signing with another
key, fails the check; a link past its expiry is refused even with a good signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from urllib.parse import urlencode

SIGNATURE_VERSION = "v1"


@dataclass(frozen=True, slots=True)
class Links:
    """How download links are made: the signing key, the public base URL, how long a
    link lives and how many downloads of each file an order gets."""

    key: bytes
    base_url: str
    ttl: timedelta
    limit: int


@dataclass(frozen=True, slots=True)
class SignedLink:
    url: str
    expires_at: datetime


def signature(key: bytes, *, order_id: str, file_id: str, expires: int) -> str:
    message = f"{SIGNATURE_VERSION}:{order_id}:{file_id}:{expires}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def path(order_id: str, file_id: str) -> str:
    return f"/d/{order_id}/{file_id}"


def sign(links: Links, *, order_id: str, file_id: str, now: datetime) -> SignedLink:
    """A link to download ``file_id`` as bought in ``order_id``, valid until
    ``now + links.ttl`` (to the second)."""
    expires = int((now + links.ttl).timestamp())
    query = urlencode(
        {
            "expires": expires,
            "signature": signature(links.key, order_id=order_id, file_id=file_id, expires=expires),
        }
    )
    return SignedLink(
        url=f"{links.base_url}{path(order_id, file_id)}?{query}",
        expires_at=datetime.fromtimestamp(expires, UTC),
    )


Verdict = Literal["valid", "tampered", "expired"]


def verify(
    key: bytes, *, order_id: str, file_id: str, expires: str, given: str, now: datetime
) -> Verdict:
    """Whether a link's parts are as signed (compared in constant time), and then whether
    it is still in time. A bad signature is ``tampered`` whatever the expiry says."""
    if not expires.isdigit() or len(expires) > 12:
        return "tampered"
    expected = signature(key, order_id=order_id, file_id=file_id, expires=int(expires))
    if not hmac.compare_digest(expected.encode(), given.encode()):
        return "tampered"
    if now.timestamp() >= int(expires):
        return "expired"
    return "valid"
