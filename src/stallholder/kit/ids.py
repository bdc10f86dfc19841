"""Resource identifiers with a type prefix (``prod_…``) and secrets."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time

# Lower-case base 36 sorts the same way under every database collation we meet (digits
# before letters, no case folding), so ids of one type sort in creation order.
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_TIME_DIGITS = 13  # 36**13 ns is about 5,000 years
_RANDOM_DIGITS = 12  # about 62 bits of randomness
_lock = threading.Lock()
_last_ns = 0


def _base36(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 36)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))


def _monotonic_ns() -> int:
    global _last_ns
    with _lock:
        _last_ns = max(time.time_ns(), _last_ns + 1)
        return _last_ns


def new_id(prefix: str) -> str:
    """A unique id such as ``prod_0l2x…``: creation-time ordered, then unguessable.

    The time part comes from the system clock on purpose: ids order rows for pagination,
    which must hold even when the business clock is frozen (tests, test clocks).
    """
    return (
        f"{prefix}_{_base36(_monotonic_ns(), _TIME_DIGITS)}"
        f"{_base36(secrets.randbits(62), _RANDOM_DIGITS)}"
    )


def new_secret(prefix: str) -> str:
    """A high-entropy secret (API keys, client secrets) with a readable prefix."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_secret(secret: str) -> str:
    """SHA-256 of a secret. Secrets are random and long, so a fast hash is enough."""
    return hashlib.sha256(secret.encode()).hexdigest()
