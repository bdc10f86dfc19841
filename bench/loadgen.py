"""A lean closed-loop HTTP/1.1 load generator, run in its own process.

``python -m bench.loadgen '<json spec>'`` keeps ``concurrency`` keep-alive connections to
127.0.0.1 busy, each running the spec's scenario back to back, for at most ``duration``
seconds and at most ``max_iterations`` iterations in all, and prints one JSON object:
completed, errors, elapsed seconds and the sorted-percentile latencies.

Raw asyncio streams instead of an HTTP client library: the generator shares the cores
with the server, so every microsecond it spends is one the server does not get. The
server's CPU is measured from /proc by the caller, so the generator's speed does not enter
the per-sale numbers; it only limits how hard the server is pushed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"


class HTTPStatusError(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        return self.reader, self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
        """POST ``body`` as JSON; the response body, or HTTPStatusError for a non-2xx."""
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            + "\r\n"
        ).encode()
        reader, writer = await self._open()
        try:
            writer.write(head + payload)
            raw = await reader.readuntil(b"\r\n\r\n")
            status = int(raw[9:12])
            length, chunked, closing = 0, False, False
            for line in raw.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                elif name == b"connection" and value.strip().lower() == b"close":
                    closing = True
            if chunked:
                parts = []
                while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                    parts.append((await reader.readexactly(size + 2))[:-2])
                await reader.readuntil(b"\r\n")
                data = b"".join(parts)
            else:
                data = await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            self.close()
            raise
        if closing:
            self.close()
        if not 200 <= status < 300:
            raise HTTPStatusError(f"{status} {data[:200]!r}")
        return data


@dataclass(frozen=True)
class Spec:
    port: int
    scenario: str  # a name in SCENARIOS
    concurrency: int
    duration: float
    max_iterations: int
    secret_key: str = ""
    price: str = ""

    @classmethod
    def from_json(cls, text: str) -> Spec:
        return cls(**json.loads(text))


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0


async def _stallholder_sale(connection: Connection, spec: Spec, n: int, run: str) -> None:
    auth = f"Bearer {spec.secret_key}"
    created = await connection.post(
        "/v1/checkout/sessions",
        {"line_items": [{"price": spec.price, "quantity": 2}], "customer_email": f"b{n}@ex.com"},
        {"Authorization": auth, "Idempotency-Key": f"{run}-create-{n}"},
    )
    session_id = json.loads(created)["id"]
    await connection.post(
        f"/v1/checkout/sessions/{session_id}/confirm",
        {"payment_method": "tok_visa"},
        {"Authorization": auth, "Idempotency-Key": f"{run}-confirm-{n}"},
    )


async def _drop_attempt(connection: Connection, spec: Spec, n: int, run: str) -> None:
    """One buyer's reservation attempt in a drop: a checkout session for one unit, under
    the buyer's own email. 409 (sold out) is an answer, not an error."""
    try:
        await connection.post(
            "/v1/checkout/sessions",
            {
                "line_items": [{"price": spec.price, "quantity": 1}],
                "customer_email": f"{run}-{n}@ex.com",
            },
            {"Authorization": f"Bearer {spec.secret_key}", "Idempotency-Key": f"{run}-drop-{n}"},
        )
    except HTTPStatusError as error:
        if not str(error).startswith("409"):
            raise


async def _drop_buy(connection: Connection, spec: Spec, n: int, run: str) -> None:
    """A reservation attempt, then paying with ``tok_visa`` when it held a unit."""
    auth = f"Bearer {spec.secret_key}"
    try:
        created = await connection.post(
            "/v1/checkout/sessions",
            {
                "line_items": [{"price": spec.price, "quantity": 1}],
                "customer_email": f"{run}-{n}@ex.com",
            },
            {"Authorization": auth, "Idempotency-Key": f"{run}-buy-{n}"},
        )
    except HTTPStatusError as error:
        if not str(error).startswith("409"):
            raise
        return
    await connection.post(
        f"/v1/checkout/sessions/{json.loads(created)['id']}/confirm",
        {"payment_method": "tok_visa"},
        {"Authorization": auth, "Idempotency-Key": f"{run}-pay-{n}"},
    )


async def _floor_sale(connection: Connection, spec: Spec, n: int, run: str) -> None:
    await connection.post(
        "/v1/sales", {"price": spec.price, "quantity": 2, "customer_email": f"b{n}@ex.com"}, {}
    )


async def _floor_hold(connection: Connection, spec: Spec, n: int, run: str) -> None:
    """The floor app's hold of one unit (``spec.price`` names its drop item); 409 (nothing
    left) is an answer, not an error."""
    try:
        await connection.post(
            "/v1/holds", {"item": spec.price, "customer_email": f"{run}-{n}@ex.com"}, {}
        )
    except HTTPStatusError as error:
        if not str(error).startswith("409"):
            raise


async def _bare(connection: Connection, spec: Spec, n: int, run: str) -> None:
    await connection.post("/echo", {"n": n, "customer": "a@example.com"}, {})


SCENARIOS = {
    "stallholder_sale": _stallholder_sale,
    "floor_sale": _floor_sale,
    "floor_hold": _floor_hold,
    "bare": _bare,
    "drop_attempt": _drop_attempt,
    "drop_buy": _drop_buy,
}


async def run(spec: Spec) -> Result:
    """Bounded twice: by ``duration`` and by ``max_iterations`` in all."""
    scenario = SCENARIOS[spec.scenario]
    result = Result()
    run_id = uuid.uuid4().hex[:10]
    counter = iter(range(spec.max_iterations))
    start = time.monotonic()
    stop_at = start + spec.duration

    async def client() -> None:
        connection = Connection(spec.port)
        try:
            for n in counter:
                began = time.monotonic()
                if began >= stop_at:
                    break
                try:
                    await scenario(connection, spec, n, run_id)
                except (HTTPStatusError, OSError, asyncio.IncompleteReadError) as error:
                    result.errors += 1
                    if len(result.first_errors) < 5:
                        result.first_errors.append(f"{type(error).__name__}: {error}")
                    continue
                result.latencies.append(time.monotonic() - began)
        finally:
            connection.close()

    await asyncio.gather(*(client() for _ in range(spec.concurrency)))
    result.elapsed = time.monotonic() - start
    return result


def main() -> None:
    spec = Spec.from_json(sys.argv[1])
    result = asyncio.run(run(spec))
    print(
        json.dumps(
            {
                "latencies": result.latencies,
                "errors": result.errors,
                "first_errors": result.first_errors,
                "elapsed": result.elapsed,
            }
        )
    )


if __name__ == "__main__":
    main()
