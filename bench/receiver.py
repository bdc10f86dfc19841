"""A fast local webhook receiver for the webhook benchmark: a bare asyncio HTTP/1.1 server
that reads each request (keep-alive, ``Content-Length`` bodies) and answers 200 at once.

A framework (the FastAPI bare app) spends more CPU per request than the worker does per
delivery, on the same two cores; this measures the worker, not the receiver. It answers
any path, so ``/healthz`` works for ``harness.server``.

python -m bench.receiver PORT
"""

from __future__ import annotations

import asyncio
import sys

BODY = b'{"received":true}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


class _Receiver(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            assert self.transport is not None
            self.transport.write(RESPONSE)


async def _serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Receiver, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1])))
