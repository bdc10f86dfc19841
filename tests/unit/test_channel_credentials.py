"""Channel credentials sealed at rest (channels.credentials)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from stallholder.channels.credentials import CredentialsUnreadable, Vault, vault_for


def test_sealed_credentials_open_with_the_key_and_hide_the_token() -> None:
    vault = Vault(Fernet.generate_key())
    sealed = vault.seal({"access_token": "shpat_secret", "shop_url": "https://a.example"})
    assert "shpat_secret" not in sealed
    assert vault.open(sealed) == {"access_token": "shpat_secret", "shop_url": "https://a.example"}


def test_another_key_or_a_changed_token_does_not_open() -> None:
    sealed = Vault(Fernet.generate_key()).seal({"access_token": "x"})
    with pytest.raises(CredentialsUnreadable):
        Vault(Fernet.generate_key()).open(sealed)
    vault = Vault(Fernet.generate_key())
    sealed = vault.seal({"access_token": "x"})
    tampered = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(CredentialsUnreadable):
        vault.open(tampered)


def test_an_install_state_expires() -> None:
    key = Fernet.generate_key()
    vault = Vault(key)
    sealed = vault.seal({"creator": "cr_1"})
    assert vault.open(sealed, ttl_seconds=60) == {"creator": "cr_1"}
    # Sealed long ago (1970-01-12), by the same key.
    expired = Fernet(key).encrypt_at_time(b'{"creator": "cr_1"}', current_time=1_000_000)
    with pytest.raises(CredentialsUnreadable):
        vault.open(expired.decode(), ttl_seconds=60)


def test_the_embedded_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    first = vault_for(configured="", data_dir=tmp_path)
    sealed = first.seal({"k": "v"})
    assert vault_for(configured="", data_dir=tmp_path).open(sealed) == {"k": "v"}
    mode = stat.S_IMODE((tmp_path / "channel-key").stat().st_mode)
    assert mode == 0o600


def test_a_configured_key_is_used(tmp_path: Path) -> None:
    key = Fernet.generate_key()
    sealed = Vault(key).seal({"k": "v"})
    assert vault_for(configured=key.decode(), data_dir=tmp_path).open(sealed) == {"k": "v"}
    assert not (tmp_path / "channel-key").exists()
