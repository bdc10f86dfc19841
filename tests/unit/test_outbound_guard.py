"""``kit.outbound.GuardedTransport``: every request goes to an address of its host that
was resolved and checked for it, with the host's name kept for HTTP and TLS. The network
is an ``httpx.MockTransport`` that records what reached it; DNS is a table."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpx
import pytest

from stallholder.kit.addresses import IPAddress
from stallholder.kit.outbound import GuardedTransport, RefusedAddress

pytestmark = pytest.mark.anyio

PUBLIC = "93.184.215.14"
OTHER_PUBLIC = "151.101.1.69"
HINT = (
    "is not a public address; outbound requests go to public addresses only (an operator "
    "can allow private ones with STALLHOLDER_ALLOW_PRIVATE_WEBHOOK_TARGETS=true)"
)


class Dns:
    """Answers from ``table`` (host -> addresses), which a test changes as DNS would;
    records every lookup."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.lookups.append((host, port))
        await asyncio.sleep(0)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(a) for a in self.table[host]]


class Network:
    """What reached the wire: (URL, Host header, TLS server name) per request."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, object]] = []
        self.unreachable: set[str] = set()
        self.redirects: dict[str, str] = {}

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.host in self.unreachable:
            raise httpx.ConnectError("connection refused", request=request)
        self.seen.append(
            (str(request.url), request.headers["host"], request.extensions.get("sni_hostname"))
        )
        location = self.redirects.get(request.headers["host"])
        if location is not None:
            return httpx.Response(302, headers={"location": location})
        return httpx.Response(200, text="ok")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client(
    dns: Dns, network: Network, clock: Clock, *, allow_private: bool = False
) -> httpx.AsyncClient:
    transport = GuardedTransport(
        httpx.MockTransport(network.handle),
        allow_private=allow_private,
        resolve=dns,
        ttl_seconds=30.0,
        monotonic=clock,
    )
    return httpx.AsyncClient(transport=transport)


async def test_a_request_goes_to_the_checked_address_with_the_hosts_name() -> None:
    dns, network = Dns({"shop.example": [PUBLIC]}), Network()
    async with client(dns, network, Clock()) as http:
        response = await http.post("https://shop.example:8443/admin/api?page=2", json={"a": 1})

    assert response.status_code == 200
    assert str(response.request.url) == "https://shop.example:8443/admin/api?page=2"
    assert network.seen == [
        (f"https://{PUBLIC}:8443/admin/api?page=2", "shop.example:8443", "shop.example")
    ]
    assert dns.lookups == [("shop.example", 8443)]


async def test_an_answer_is_used_for_its_ttl_then_the_host_is_resolved_again() -> None:
    dns, network, clock = Dns({"shop.example": [PUBLIC]}), Network(), Clock()
    async with client(dns, network, clock) as http:
        await http.get("https://shop.example/a")
        dns.table["shop.example"] = [OTHER_PUBLIC]
        clock.now += 29.9
        await http.get("https://shop.example/b")
        clock.now += 0.1
        await http.get("https://shop.example/c")

    assert dns.lookups == [("shop.example", 443), ("shop.example", 443)]
    assert [url for url, _, _ in network.seen] == [
        f"https://{PUBLIC}/a",
        f"https://{PUBLIC}/b",
        f"https://{OTHER_PUBLIC}/c",
    ]


async def test_a_host_that_later_resolves_to_a_private_address_is_refused() -> None:
    dns, network, clock = Dns({"shop.example": [PUBLIC]}), Network(), Clock()
    async with client(dns, network, clock) as http:
        await http.get("https://shop.example/a")
        dns.table["shop.example"] = ["127.0.0.1"]  # rebound
        clock.now += 30
        with pytest.raises(RefusedAddress) as refused:
            await http.get("https://shop.example/b")
        dns.table["shop.example"] = [PUBLIC, "169.254.169.254"]
        clock.now += 30
        with pytest.raises(RefusedAddress) as refused_too:
            await http.get("https://shop.example/c")

    assert str(refused.value) == f"shop.example resolves to 127.0.0.1, which {HINT}"
    assert str(refused_too.value) == f"shop.example resolves to 169.254.169.254, which {HINT}"
    assert isinstance(refused.value, httpx.ConnectError)
    assert [url for url, _, _ in network.seen] == [f"https://{PUBLIC}/a"]


async def test_requests_that_start_together_share_one_lookup() -> None:
    dns, network = Dns({"shop.example": [PUBLIC]}), Network()
    async with client(dns, network, Clock()) as http:
        responses = await asyncio.gather(*(http.get(f"https://shop.example/{i}") for i in range(5)))

    assert [r.status_code for r in responses] == [200] * 5
    assert dns.lookups == [("shop.example", 443)]


async def test_private_addresses_are_reached_when_the_operator_allows_them() -> None:
    dns, network = Dns({"store.test": ["127.0.0.1"]}), Network()
    async with client(dns, network, Clock(), allow_private=True) as http:
        await http.get("http://store.test:8101/wp-json/wc/v3/products")
        await http.get("http://10.0.0.7/status")

    assert network.seen == [
        ("http://127.0.0.1:8101/wp-json/wc/v3/products", "store.test:8101", "store.test"),
        ("http://10.0.0.7/status", "10.0.0.7", None),
    ]


async def test_an_address_in_the_url_is_checked_and_sent_as_it_is() -> None:
    """A webhook delivery comes pinned by its sender, with the host's name in ``Host``."""
    dns, network = Dns({}), Network()
    async with client(dns, network, Clock()) as http:
        request = httpx.Request(
            "POST",
            f"https://{PUBLIC}/hooks",
            headers={"host": "hooks.example"},
            extensions={"sni_hostname": "hooks.example"},
        )
        await http.send(request)
        with pytest.raises(RefusedAddress) as refused:
            await http.get("http://[::ffff:169.254.169.254]/latest/meta-data/")

    assert network.seen == [(f"https://{PUBLIC}/hooks", "hooks.example", "hooks.example")]
    assert str(refused.value) == f"::ffff:a9fe:a9fe {HINT}"
    assert dns.lookups == []


async def test_a_redirect_to_a_private_address_is_refused() -> None:
    dns = Dns({"shop.example": [PUBLIC], "internal.example": ["169.254.169.254"]})
    network = Network()
    network.redirects["shop.example"] = "http://internal.example/latest/meta-data/"
    async with client(dns, network, Clock()) as http:
        with pytest.raises(RefusedAddress) as refused:
            await http.get("https://shop.example/a", follow_redirects=True)

    assert str(refused.value) == f"internal.example resolves to 169.254.169.254, which {HINT}"
    assert network.seen == [(f"https://{PUBLIC}/a", "shop.example", "shop.example")]


async def test_the_next_address_is_tried_when_one_cannot_be_reached() -> None:
    dns, network = Dns({"shop.example": [OTHER_PUBLIC, PUBLIC]}), Network()
    network.unreachable.add(OTHER_PUBLIC)
    async with client(dns, network, Clock()) as http:
        response = await http.get("https://shop.example/a")

    assert response.status_code == 200
    assert network.seen == [(f"https://{PUBLIC}/a", "shop.example", "shop.example")]


async def test_a_host_that_does_not_resolve_fails_to_connect_and_is_asked_again() -> None:
    dns, network = Dns({}), Network()
    async with client(dns, network, Clock()) as http:
        for _ in range(2):
            with pytest.raises(httpx.ConnectError) as failed:
                await http.get("https://gone.example/a")

    assert (
        str(failed.value) == "gone.example does not resolve: [Errno -2] Name or service not known"
    )
    assert not isinstance(failed.value, RefusedAddress)
    assert dns.lookups == [("gone.example", 443), ("gone.example", 443)]
    assert network.seen == []
