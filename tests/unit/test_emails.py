"""The keys buyers are recognised by across creators (accounts/emails.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stallholder.accounts.emails import InvalidEmailKey, buyer_key, same_person_key


@pytest.mark.parametrize(
    ("email", "expected"),
    [
        ("ana@example.com", "ana@example.com"),
        ("  Ana@Example.COM ", "ana@example.com"),
        ("ana@example.com.", "ana@example.com"),
        ("Ana@Bücher.Example", "ana@xn--bcher-kva.example"),
        ("ana@XN--BCHER-KVA.example", "ana@xn--bcher-kva.example"),
        # Dots and +tags are the buyer's own choice here: distinct buyers.
        ("a.n.a@gmail.com", "a.n.a@gmail.com"),
        ("ana+zines@example.com", "ana+zines@example.com"),
        # The local part may itself contain "@" when quoted; the domain is after the last.
        ('"a@b"@example.com', '"a@b"@example.com'),
    ],
)
def test_buyer_key(email: str, expected: str) -> None:
    assert buyer_key(email) == expected


@pytest.mark.parametrize(
    ("email", "expected"),
    [
        ("ana@example.com", "ana@example.com"),
        ("ana+zines@example.com", "ana@example.com"),
        ("a.n.a@example.com", "a.n.a@example.com"),  # dots matter outside Gmail
        ("A.N.A+drops@gmail.com", "ana@gmail.com"),
        ("a.n.a@GoogleMail.com", "ana@gmail.com"),
        ("+only@example.com", "+only@example.com"),  # nothing before the tag: kept
        ("ana@Bücher.Example", "ana@xn--bcher-kva.example"),
    ],
)
def test_same_person_key(email: str, expected: str) -> None:
    assert same_person_key(email) == expected


@pytest.mark.parametrize(
    "email", ["", "ana", "ana@", "ana@.", "@example.com", "ana@xn--zz.example"]
)
def test_not_an_address_is_refused(email: str) -> None:
    with pytest.raises(InvalidEmailKey):
        buyer_key(email)
    with pytest.raises(InvalidEmailKey):
        same_person_key(email)


_LOCAL = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789.+_-", min_size=1)
_DOMAIN = st.sampled_from(["example.com", "EXAMPLE.com", "gmail.com", "Bücher.example"])


@given(local=_LOCAL, domain=_DOMAIN)
def test_keys_are_idempotent_and_the_strict_key_is_coarser(local: str, domain: str) -> None:
    email = f"{local}@{domain}"
    key = buyer_key(email)
    assert buyer_key(key) == key
    assert same_person_key(key) == same_person_key(email)
    assert same_person_key(same_person_key(email)) == same_person_key(email)
    assert buyer_key(email.upper()) == buyer_key(email.lower())
