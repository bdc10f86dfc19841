"""An httpx transport for many concurrent outbound requests (webhook deliveries).

httpcore's connection pool looks at every connection, and asks the socket whether it is
still alive, each time any request starts or finishes: the cost of a request grows with
the number of connections, and at 16 or more a worker spends more time in the pool than
on the wire. ``ShardedTransport`` keeps one small pool per connection slot instead. A
request takes a free slot (preferring one last used for the same origin, so keep-alive
connections are reused) and gives it back when its response is closed, so the number of
slots also bounds how many requests are in flight.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import AsyncIterator

import httpx


class _SlotStream(httpx.AsyncByteStream):
    """The response body; closing it hands the slot back."""

    def __init__(self, stream: httpx.AsyncByteStream, release: _Release) -> None:
        self._stream = stream
        self._release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._release()


class _Release:
    def __init__(self, transport: ShardedTransport, slot: _Slot) -> None:
        self._transport = transport
        self._slot = slot
        self._done = False

    def __call__(self) -> None:
        if not self._done:
            self._done = True
            self._transport._give_back(self._slot)


class _Slot:
    def __init__(self, transport: httpx.AsyncHTTPTransport) -> None:
        self.transport = transport
        self.origin: tuple[bytes, bytes, int | None] | None = None


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process: loading the CA bundle takes ~0.05 s."""
    return httpx.create_ssl_context()


class ShardedTransport(httpx.AsyncBaseTransport):
    """``slots`` one-connection pools; at most ``slots`` requests in flight."""

    def __init__(self, *, slots: int) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self._slots = [
            _Slot(httpx.AsyncHTTPTransport(limits=limits, verify=_tls_context()))
            for _ in range(slots)
        ]
        self._free = list(self._slots)
        self._available = asyncio.Semaphore(slots)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._available.acquire()
        origin = (request.url.raw_scheme, request.url.raw_host, request.url.port)
        slot = next((s for s in reversed(self._free) if s.origin == origin), self._free[-1])
        self._free.remove(slot)
        slot.origin = origin
        release = _Release(self, slot)
        try:
            response = await slot.transport.handle_async_request(request)
        except BaseException:
            release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_SlotStream(response.stream, release),
            extensions=response.extensions,
        )

    def _give_back(self, slot: _Slot) -> None:
        self._free.append(slot)
        self._available.release()

    async def aclose(self) -> None:
        for slot in self._slots:
            await slot.transport.aclose()
