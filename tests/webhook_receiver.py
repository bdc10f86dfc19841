"""A real HTTP receiver on localhost that verifies every webhook with the
``standardwebhooks`` library, as a creator's server would.

It runs ``http.server`` in a thread, records every request with whether its signature
verified against each secret it knows, and answers what the test tells it to.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook


class FrozenTimeWebhook(Webhook):
    """The library's verification with its 5-minute timestamp window switched off: tests
    on a frozen clock sign with timestamps from the clock's past. Signature checking is
    the library's own."""

    def _Webhook__verify_timestamp(self, timestamp_header: str) -> datetime:
        return datetime.fromtimestamp(float(timestamp_header), tz=UTC)


@dataclass
class Received:
    webhook_id: str
    timestamp: str
    signature: str
    body: bytes
    verified_with: list[str]
    answered: int


@dataclass
class Receiver:
    secrets: list[str]
    frozen_time: bool = True
    # What to answer: a status code, or a callable of the request number (from 1).
    answer: int | Callable[[int], int] = 200
    delay_seconds: float = 0.0
    received: list[Received] = field(default_factory=list)
    started: int = 0
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def verify(self, body: bytes, headers: dict[str, str]) -> list[str]:
        verified = []
        for secret in self.secrets:
            checker = (FrozenTimeWebhook if self.frozen_time else Webhook)(secret)
            try:
                checker.verify(body, headers)
            except Exception:  # noqa: S112 - any failure means "not this secret"
                continue
            verified.append(secret)
        return verified

    def ids(self) -> list[str]:
        with self._lock:
            return [r.webhook_id for r in self.received]

    def verified_ids(self) -> set[str]:
        with self._lock:
            return {r.webhook_id for r in self.received if r.verified_with}

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        with self._lock:
            self.started += 1
            number = self.started
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        status = self.answer(number) if callable(self.answer) else self.answer
        record = Received(
            webhook_id=headers.get("webhook-id", ""),
            timestamp=headers.get("webhook-timestamp", ""),
            signature=headers.get("webhook-signature", ""),
            body=body,
            verified_with=self.verify(body, headers),
            answered=status,
        )
        with self._lock:
            self.received.append(record)
        return status


@contextmanager
def serve(receiver: Receiver) -> Iterator[Receiver]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            status = receiver.handle(headers, body)
            payload = b'{"received": true}' if status < 300 else b"not now"
            self.send_response(status)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
