"""``kit.outbound.ShardedTransport`` with two hosts behind one address (pinned requests:
the URL names the address, ``sni_hostname`` the host): a kept-alive connection made for
one host is never reused for the other, whose certificate it never checked. A local
HTTP/1.1 server counts the connections."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from stallholder.kit.outbound import ShardedTransport

pytestmark = pytest.mark.anyio


async def test_a_connection_made_for_one_server_name_is_not_reused_for_another() -> None:
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async def serve_until_closed(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await serve(r, w)
        except (asyncio.IncompleteReadError, ConnectionError):
            w.close()

    server = await asyncio.start_server(serve_until_closed, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = ShardedTransport(slots=1)
    try:
        async with httpx.AsyncClient(transport=transport) as client:
            for name in ("a.example", "a.example", "b.example", "b.example"):
                response = await client.send(
                    client.build_request(
                        "GET",
                        f"http://127.0.0.1:{port}/",
                        headers={"Host": name},
                        extensions={"sni_hostname": name},
                    )
                )
                assert (response.status_code, response.text) == (200, "ok")
    finally:
        server.close()
    # One connection per name: a.example's is kept alive for its second request, and
    # b.example gets its own.
    assert connections == 2


async def test_a_slot_whose_connection_never_came_back_starts_afresh() -> None:
    """A slot's pool holds one connection. If a connection it lent is never given back (a
    response its pool still counts as open), every request on that slot would wait for it
    and time out: the first ``PoolTimeout`` replaces the slot's pool, and the next request
    to the same origin goes through."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    transport = ShardedTransport(slots=1)
    timeout = httpx.Timeout(5.0, pool=0.2)
    try:
        async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
            assert (await client.get(url)).text == "ok"
            # The slot's connection is taken behind the slot's back and never returned.
            leaked = await transport._slots[0].transport.handle_async_request(
                httpx.Request("GET", url, extensions={"timeout": timeout.as_dict()})
            )
            with pytest.raises(httpx.PoolTimeout):
                await client.get(url)
            again = await client.get(url)
            assert (again.status_code, again.text) == (200, "ok")
            await leaked.aclose()
    finally:
        server.close()
