"""Pure keys for recognising one person by email address across creators.

``buyer_key`` is what a buyer is keyed by: two addresses that any mail system delivers to
the same mailbox by the rules every provider shares (case of the domain, its Unicode or
ASCII spelling) give the same key. Dots and ``+tags`` in the local part are kept: a buyer
who signs up as ``ana+zines@…`` chose that address, and not every provider ignores them.

``same_person_key`` is stricter, for rules that must not be dodged by rewriting an address
(per-buyer limits in drops): it also drops a ``+tag`` and, for Gmail, the dots. It is never
used to merge buyers.
"""

from __future__ import annotations

import idna

# Providers that ignore dots in the local part; googlemail.com is the same mailbox as gmail.com.
_DOTLESS_DOMAINS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


class InvalidEmailKey(ValueError):
    """The value has no local part and domain, or the domain is not a valid IDNA name."""


def _split(email: str) -> tuple[str, str]:
    value = email.strip()
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain:
        raise InvalidEmailKey(f"not an email address: {email!r}")
    return local, domain


def _ascii_domain(domain: str) -> str:
    name = domain.rstrip(".")
    if not name:
        raise InvalidEmailKey(f"not an email address: no domain in {domain!r}")
    try:
        if name.isascii():
            name = name.lower()
            if not (name.startswith("xn--") or ".xn--" in name):
                return name
            # An A-label spelling: decoded (so "xn--" garbage is refused) and encoded again.
            name = idna.decode(name)
        return idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError as error:
        raise InvalidEmailKey(f"the domain {domain!r} is not a valid name: {error}") from None


def buyer_key(email: str) -> str:
    """The key a buyer is found by: the local part lower-cased, the domain lower-cased and
    in its ASCII (IDNA) form. ``Ana@Bücher.Example`` → ``ana@xn--bcher-kva.example``.

    Raises:
        InvalidEmailKey: no ``local@domain``, or an invalid domain.
    """
    local, domain = _split(email)
    return f"{local.lower()}@{_ascii_domain(domain)}"


def same_person_key(email: str) -> str:
    """``buyer_key`` with a ``+tag`` dropped from the local part, and for Gmail (and
    googlemail.com, the same mailbox) the dots too: ``A.N.A+drops@googlemail.com`` →
    ``ana@gmail.com``.

    Raises:
        InvalidEmailKey: no ``local@domain``, or an invalid domain.
    """
    local, domain = buyer_key(email).rsplit("@", 1)
    base = local.split("+", 1)[0] or local
    if domain in _DOTLESS_DOMAINS:
        domain = _DOTLESS_DOMAINS[domain]
        base = base.replace(".", "") or base
    return f"{base}@{domain}"
