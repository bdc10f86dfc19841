"""What every channel double shares: serving an ASGI app on a free local port, chaos (a
fraction of requests lost, delayed or throttled, webhooks duplicated), and webhook
deliveries sent from a background thread with retries, as the real platforms send them.

The doubles themselves (``shopify``, ``etsy``, ``woocommerce``) follow their providers'
published APIs; this module only holds the plumbing."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send


@dataclass
class Chaos:
    """Misbehaviour of a double, as fractions of API requests (0 to 1), drawn from a seeded
    random source so a run can be repeated.

    - ``lose``: the reply is lost (a 502 with no body); for half of them the channel has
      applied the request first, so the client cannot tell whether it happened.
    - ``delay`` of ``delay_seconds``: the reply comes late.
    - ``throttle``: refused with the channel's rate-limit reply (429 with ``Retry-After``),
      as if another app had spent the quota.
    - ``duplicate``: a webhook delivery is sent twice (same delivery id).
    """

    lose: float = 0.0
    delay: float = 0.0
    delay_seconds: float = 0.5
    throttle: float = 0.0
    duplicate: float = 0.0
    seed: int = 0
    random: random.Random = field(init=False, repr=False)
    # What chaos did: "lost", "delayed", "throttled" (requests), "duplicated" (webhooks).
    counts: Counter[str] = field(init=False, default_factory=Counter)

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)

    def draw(self, fraction: float) -> bool:
        return fraction > 0 and self.random.random() < fraction


class ChaosMiddleware:
    """Applies a double's ``Chaos`` to requests under ``prefix`` (the API, not the
    double's own control routes). ``throttled`` builds the channel's own 429 reply."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        chaos: Chaos,
        prefix: str,
        throttled: Any,
    ) -> None:
        self.app = app
        self.chaos = chaos
        self.prefix = prefix
        self.throttled = throttled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        chaos = self.chaos
        if chaos.draw(chaos.delay):
            chaos.counts["delayed"] += 1
            await asyncio.sleep(chaos.delay_seconds)
        if chaos.draw(chaos.throttle):
            chaos.counts["throttled"] += 1
            await self.throttled(scope, receive, send)
            return
        if chaos.draw(chaos.lose):
            chaos.counts["lost"] += 1
            if chaos.random.random() < 0.5:  # applied, then the reply is lost

                async def swallow(message: Any) -> None:
                    return None

                await self.app(scope, receive, swallow)
            await send({"type": "http.response.start", "status": 502, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


@contextlib.contextmanager
def serve_app(app: ASGIApp, *, name: str, port: int = 0) -> Iterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1 (``port`` 0: a free one) in a background
    thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    bound = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_level="warning", lifespan="off", ws="none", http="h11", access_log=False
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the {name} double did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@dataclass(frozen=True)
class Delivery:
    url: str
    headers: Mapping[str, str]
    body: bytes


class WebhookSender:
    """Sends webhook deliveries from a background thread, in order, retrying a failed
    one (no 2xx) up to ``attempts`` times ``retry_seconds`` apart, as the platforms retry
    (on a much shorter schedule). ``sent`` counts deliveries answered 2xx; ``failed``
    keeps those that never were. ``chaos.duplicate`` sends a delivery twice."""

    def __init__(self, chaos: Chaos, *, attempts: int = 5, retry_seconds: float = 0.2) -> None:
        self.chaos = chaos
        self.attempts = attempts
        self.retry_seconds = retry_seconds
        self.sent = 0
        self.failed: list[Delivery] = []
        self._queue: queue.Queue[Delivery | None] = queue.Queue()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def send(self, delivery: Delivery) -> None:
        self._idle.clear()
        self._queue.put(delivery)
        if self.chaos.draw(self.chaos.duplicate):
            self.chaos.counts["duplicated"] += 1
            self._queue.put(delivery)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until every queued delivery was sent (or gave up)."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            while True:
                delivery = self._queue.get()
                if delivery is None:
                    return
                self._deliver(client, delivery)
                if self._queue.empty():
                    self._idle.set()

    def _deliver(self, client: httpx.Client, delivery: Delivery) -> None:
        for attempt in range(self.attempts):
            try:
                response = client.post(
                    delivery.url, content=delivery.body, headers=dict(delivery.headers)
                )
                if 200 <= response.status_code < 300:
                    self.sent += 1
                    return
            except httpx.HTTPError:
                pass
            if attempt + 1 < self.attempts:
                time.sleep(self.retry_seconds)
        self.failed.append(delivery)
