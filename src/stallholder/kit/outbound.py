"""httpx transports for outbound requests: many at once (webhook deliveries), and guarded.

httpcore's connection pool looks at every connection, and asks the socket whether it is
still alive, each time any request starts or finishes: the cost of a request grows with
the number of connections, and at 16 or more a worker spends more time in the pool than
on the wire. ``ShardedTransport`` keeps one small pool per connection slot instead. A
request takes a free slot (preferring one last used for the same origin, so keep-alive
connections are reused) and gives it back when its response is closed, so the number of
slots also bounds how many requests are in flight.

``GuardedTransport`` wraps another transport so that every request, redirects included,
goes only to an address that was resolved and checked: the server-side request forgery
guard of requests to URLs that tenants choose (channel stores), which a DNS answer that
changes after the URL was first checked (DNS rebinding) would otherwise get round.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx

from stallholder.kit.addresses import IPAddress, is_public_address, parse_address

# How long a host's checked addresses are used before it is resolved again (seconds): a
# push batch resolves each store once, and a changed DNS answer is seen this soon.
RESOLVE_TTL_SECONDS = 30.0
# Expired answers are dropped once this many hosts are remembered.
_MOST_HOSTS = 1024
_NOT_PUBLIC = (
    "is not a public address; outbound requests go to public addresses only (an operator "
    "can allow private ones with STALLHOLDER_ALLOW_PRIVATE_WEBHOOK_TARGETS=true)"
)

# Every address a host resolves to: (host, port) -> addresses. Raises OSError.
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


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


# A slot's origin: scheme, host, port and the TLS server name (a request pinned to an
# address names its host there, ``sni_hostname``).
_Origin = tuple[bytes, bytes, int | None, object]


def _slot_transport() -> httpx.AsyncHTTPTransport:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return httpx.AsyncHTTPTransport(limits=limits, verify=_tls_context())


class _Slot:
    def __init__(self, transport: httpx.AsyncHTTPTransport) -> None:
        self.transport = transport
        self.origin: _Origin | None = None


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process: loading the CA bundle takes ~0.05 s."""
    return httpx.create_ssl_context()


class ShardedTransport(httpx.AsyncBaseTransport):
    """``slots`` one-connection pools; at most ``slots`` requests in flight."""

    def __init__(self, *, slots: int) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self._slots = [_Slot(_slot_transport()) for _ in range(slots)]
        self._free = list(self._slots)
        self._available = asyncio.Semaphore(slots)
        self._closing: set[asyncio.Task[None]] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._available.acquire()
        url = request.url
        origin = (url.raw_scheme, url.raw_host, url.port, request.extensions.get("sni_hostname"))
        slot = next((s for s in reversed(self._free) if s.origin == origin), self._free[-1])
        self._free.remove(slot)
        release = _Release(self, slot)
        try:
            before = slot.origin
            if before is not None and before != origin and before[:3] == origin[:3]:
                # The same address under another server name (two hosts behind one
                # address): its kept-alive connection was made, and its certificate
                # checked, for the other name, and httpcore would reuse it (it pools by
                # address). A new pool instead.
                stale, slot.transport = slot.transport, _slot_transport()
                await stale.aclose()
            slot.origin = origin
            response = await slot.transport.handle_async_request(request)
        except BaseException as error:
            if isinstance(error, httpx.PoolTimeout):
                # This slot carries one request at a time, so its one-connection pool can
                # only time out if a connection it lent never came back (a response it
                # still counts as open). Every later request to this origin would pick the
                # same slot and time out too: the slot starts afresh instead.
                stale, slot.transport = slot.transport, _slot_transport()
                self._closing.add(asyncio.create_task(stale.aclose()))
                self._closing = {task for task in self._closing if not task.done()}
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


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (the host itself when it is an address).

    Raises:
        OSError: the host does not resolve.
    """
    literal = parse_address(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found = [parse_address(str(info[4][0])) for info in infos]
    return list(dict.fromkeys(a for a in found if a is not None))


class RefusedAddress(httpx.ConnectError):
    """The host resolves to an address outbound requests may not reach. A
    ``ConnectError``: whoever handles a failed connection (a channel connector's
    ``ChannelUnavailable``) handles it, with this message."""


class GuardedTransport(httpx.AsyncBaseTransport):
    """Sends each request to an address of its host that was resolved and checked.

    The host is resolved (each answer is used for ``ttl_seconds``, so a batch of requests
    to one host resolves it once) and, unless ``allow_private``, refused with
    ``RefusedAddress`` when any of its addresses is not public. The request then goes to
    the first address, with the original ``Host`` header and the host as the TLS server
    name (``sni_hostname``), so the certificate is still verified for the host; the next
    address is tried when a connection cannot be made. A host that is an address is
    checked and sent as it is (a webhook delivery, pinned by its sender). Redirects are
    requests of their own, so each hop is checked too.
    """

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        *,
        allow_private: bool,
        resolve: Resolver = resolve,
        ttl_seconds: float = RESOLVE_TTL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._allow_private = allow_private
        self._resolve = resolve
        self._ttl = ttl_seconds
        self._monotonic = monotonic
        self._answers: dict[str, tuple[float, asyncio.Future[list[IPAddress]]]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        literal = parse_address(url.host)
        if literal is not None:
            if not self._allow_private and not is_public_address(literal):
                raise RefusedAddress(f"{literal} {_NOT_PUBLIC}", request=request)
            return await self._inner.handle_async_request(request)
        addresses = await self._addresses(url, request)
        private = [str(a) for a in addresses if not is_public_address(a)]
        if private and not self._allow_private:
            raise RefusedAddress(
                f"{url.host} resolves to {', '.join(private)}, which {_NOT_PUBLIC}",
                request=request,
            )
        headers = request.headers.copy()
        if "host" not in headers:
            headers["host"] = url.netloc.decode("ascii")
        extensions = {**request.extensions, "sni_hostname": url.host}
        failure: httpx.ConnectError | None = None
        for address in addresses:
            pinned = httpx.Request(
                request.method,
                url.copy_with(host=str(address)),
                headers=headers,
                stream=request.stream,
                extensions=extensions,
            )
            try:
                return await self._inner.handle_async_request(pinned)
            except httpx.ConnectError as error:  # nothing was sent: try the next address
                failure = error
        assert failure is not None  # there is at least one address
        raise failure

    async def _addresses(self, url: httpx.URL, request: httpx.Request) -> list[IPAddress]:
        """The host's addresses: the answer of the last ``ttl_seconds``, or a new one
        (requests that start while it is being resolved wait for the same answer)."""
        host = url.host
        now = self._monotonic()
        cached = self._answers.get(host)
        if cached is None or cached[0] <= now:
            port = url.port or (443 if url.scheme == "https" else 80)
            cached = (now + self._ttl, asyncio.ensure_future(self._resolve(host, port)))
            if len(self._answers) >= _MOST_HOSTS:
                self._answers = {h: a for h, a in self._answers.items() if a[0] > now}
            self._answers[host] = cached
        try:
            addresses = await asyncio.shield(cached[1])
        except OSError as error:
            if self._answers.get(host) == cached:
                del self._answers[host]  # not kept: the next request asks again
            raise httpx.ConnectError(
                f"{host} does not resolve: {error}", request=request
            ) from error
        if not addresses:
            raise httpx.ConnectError(f"{host} has no address", request=request)
        return addresses

    async def aclose(self) -> None:
        await self._inner.aclose()


# Requests in flight at once through one ``guarded_client`` (a connect or an install reads
# one channel, a page at a time).
GUARDED_CLIENT_SLOTS = 8


def guarded_client(
    *, allow_private: bool, timeout: float, resolve: Resolver = resolve
) -> httpx.AsyncClient:
    """A client whose every request goes through ``GuardedTransport``."""
    return httpx.AsyncClient(
        timeout=timeout,
        # Sharded: a connection is never reused for another TLS name at the same address.
        transport=GuardedTransport(
            ShardedTransport(slots=GUARDED_CLIENT_SLOTS),
            allow_private=allow_private,
            resolve=resolve,
        ),
    )
