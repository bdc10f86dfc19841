"""Which network addresses an outbound request (a webhook) may reach: pure functions.

Outbound requests to URLs that tenants choose are a server-side request forgery risk:
a creator could point a webhook at the platform's database, its cloud metadata service
(169.254.169.254) or anything else on the private network. Only public unicast
addresses are allowed unless the operator says otherwise.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public_address(address: IPAddress) -> bool:
    """True for a globally routable unicast address (IPv4-mapped IPv6 judged as IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def parse_address(text: str) -> IPAddress | None:
    """The address ``text`` spells (brackets and an IPv6 zone allowed), or None."""
    candidate = text.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        return None
