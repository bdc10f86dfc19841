"""How ``stallholder serve`` runs uvicorn: the options that bound slow clients.

uvicorn 0.54 bounds the *size* of a request head (h11's 16 KiB incomplete-event limit) and
how long an idle keep-alive connection stays open (``timeout_keep_alive``), but not how long
a client may take to send the head: a connection that sends ``GET / HTTP/1.1\\r\\n`` and then
nothing is held until the client gives up. ``H11Protocol`` with a head deadline closes that
gap: from the moment a connection opens, or a response completes, the next request's head
must arrive within ``header_timeout_seconds``, or the server answers 408 and closes the
connection. The body's deadline is ``app.BodyLimitMiddleware``'s.

The deadline is added to uvicorn's httptools protocol (the faster parser, pinned in the
locks) and, where httptools cannot be imported, to its h11 protocol; both hand a new
request to the app by replacing ``self.cycle`` when a whole head has been parsed.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is pinned; h11 is uvicorn's fallback
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

from stallholder.settings import Settings

_TIMEOUT_BODY = b"the request head did not arrive in time\n"
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    + f"content-length: {len(_TIMEOUT_BODY)}\r\n".encode()
    + b"connection: close\r\n\r\n"
    + _TIMEOUT_BODY
)


Protocol = TypeVar("Protocol", H11Protocol, HttpToolsProtocol)


def with_head_deadline(base: type[Protocol], seconds: float) -> type[Protocol]:
    """uvicorn's ``base`` protocol (h11 or httptools), closing connections whose request
    head is slower than ``seconds`` with a 408."""

    class WithHeadDeadline(base):  # type: ignore[valid-type,misc]
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            self._arm_head_deadline()

        def data_received(self, data: bytes) -> None:
            waiting_for = self.cycle
            super().data_received(data)
            if self.cycle is not waiting_for:  # a whole head arrived: a new request began
                self._cancel_head_deadline()

        def on_response_complete(self) -> None:
            finished = self.cycle
            super().on_response_complete()
            if self.cycle is finished and not self.transport.is_closing():
                self._arm_head_deadline()  # the next request's head is due now

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_deadline()
            super().connection_lost(exc)

        def _arm_head_deadline(self) -> None:
            self._cancel_head_deadline()
            self._head_timer = self.loop.call_later(seconds, self._head_too_slow)

        def _cancel_head_deadline(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_too_slow(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.write(_REQUEST_TIMEOUT)
                self.transport.close()

    return WithHeadDeadline


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments for ``uvicorn.run``/``uvicorn.Config`` that bound slow clients."""
    return {
        "http": with_head_deadline(
            HttpToolsProtocol if HttpToolsProtocol is not None else H11Protocol,
            settings.header_timeout_seconds,
        ),
        "timeout_keep_alive": 5,
        # h11's own default, said out loud: a request head larger than this is a 400.
        "h11_max_incomplete_event_size": 16 * 1024,
    }
