"""Which network addresses an outbound request (a webhook) may reach: pure functions.

Outbound requests to URLs that tenants choose are a server-side request forgery risk:
a creator could point a webhook at the platform's database, its cloud metadata service
(169.254.169.254) or anything else on the private network. Only public unicast
addresses are allowed unless the operator says otherwise.

IPv6 has several ways of spelling an IPv4 address, and a router or the host's own stack
may translate each back to IPv4: IPv4-mapped (``::ffff:a.b.c.d``), 6to4 (``2002:AABB:CCDD::``,
RFC 3056), Teredo (``2001:0::/32``, RFC 4380, which embeds a server and a client address)
and NAT64 (``64:ff9b::/96``, RFC 6052). Each is judged by the IPv4 address it embeds, so
``[2002:a9fe:a9fe::]`` is refused as 169.254.169.254 is. The local-use NAT64 prefix
``64:ff9b:1::/48`` (RFC 8215) and the deprecated IPv4-compatible ``::/96`` only ever lead
into an operator's own network, so they are refused whatever they embed.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for (none for a native IPv6 address)."""
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        server, client = address.teredo
        return [server, client]
    if address in _NAT64_WELL_KNOWN:
        return [ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)]
    return []


def _is_global_unicast(address: IPAddress) -> bool:
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def is_public_address(address: IPAddress) -> bool:
    """True for a globally routable unicast address.

    An IPv6 address that embeds an IPv4 one (mapped, 6to4, Teredo, NAT64) is public only
    when every address it embeds is; local-use NAT64 and IPv4-compatible addresses never
    are.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL_USE or address in _IPV4_COMPATIBLE:
            return False
        embedded = _embedded_ipv4(address)
        if embedded:
            # The mapped, 6to4, Teredo and NAT64 prefixes are transition ranges whose own
            # registry entries vary between Python versions; what they embed decides.
            return all(_is_global_unicast(v4) for v4 in embedded)
    return _is_global_unicast(address)


def is_allowed_port(port: int) -> bool:
    """Port 0 names no service (a connect to it fails or, on some stacks, goes elsewhere)."""
    return 1 <= port <= 65_535


def parse_address(text: str) -> IPAddress | None:
    """The address ``text`` spells (brackets and an IPv6 zone allowed), or None."""
    candidate = text.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        return None
