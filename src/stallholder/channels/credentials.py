"""Channel credentials encrypted at rest (ADR 0026): tokens and keys are kept as a Fernet
token (AES-128-CBC with HMAC-SHA256, from the maintained ``cryptography`` library) of
their JSON, under the platform's channel key.

The key is ``STALLHOLDER_CHANNEL_KEY`` (a Fernet key: 32 url-safe base64 bytes), or one
generated once and kept in ``<data_dir>/channel-key`` (mode 0600), as the admin key is.
Servers that share a database must share the key; losing it means reconnecting every
channel. The same key seals the short-lived state of an OAuth install (``seal`` with a
time to live), so a PKCE verifier never appears in a URL in the clear.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from stallholder.kit.key_files import key_in

KEY_FILE = "channel-key"


class CredentialsUnreadable(ValueError):
    """A sealed value does not open with this key (another key, tampered, or expired)."""


class Vault:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    def seal(self, value: Mapping[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(dict(value), sort_keys=True).encode()).decode()

    def open(self, token: str, *, ttl_seconds: int | None = None) -> dict[str, Any]:
        """Raises CredentialsUnreadable."""
        try:
            opened = self._fernet.decrypt(token.encode(), ttl=ttl_seconds)
        except InvalidToken as error:
            raise CredentialsUnreadable("the sealed value does not open with this key") from error
        value = json.loads(opened)
        if not isinstance(value, dict):
            raise CredentialsUnreadable("the sealed value is not an object")
        return value


def vault_for(*, configured: str, data_dir: Path) -> Vault:
    """The configured key, or the one kept in ``data_dir`` (made on first use)."""
    if configured:
        return Vault(configured.encode())
    return Vault(key_in(data_dir, KEY_FILE, make=lambda: Fernet.generate_key().decode()).encode())
