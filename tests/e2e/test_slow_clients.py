"""Slow clients against a real uvicorn server, as ``stallholder serve`` runs it: a request
whose head or body does not arrive in time gets a 408 and its connection back, instead of
holding it open for as long as the client likes. Raw sockets on a free port; the only time
bound is a generous one on each socket read, so a hang fails the test instead of stalling."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from stallholder.app import create_app
from stallholder.serving import uvicorn_options
from stallholder.settings import Settings

GENEROUS = 15.0  # seconds a read may take before the test fails instead of hanging


@pytest.fixture
def server(settings: Settings) -> Iterator[tuple[str, int]]:
    quick = settings.model_copy(update={"header_timeout_seconds": 0.5, "body_timeout_seconds": 0.5})
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(quick, run_worker=False),
            log_level="warning",
            access_log=False,
            **uvicorn_options(quick),
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + GENEROUS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(timeout=GENEROUS)
        sock.close()


def _connect(address: tuple[str, int]) -> socket.socket:
    connection = socket.create_connection(address, timeout=GENEROUS)
    connection.settimeout(GENEROUS)
    return connection


def _read_response(connection: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length (all this server sends here)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = connection.recv(65536)
        assert chunk, "connection closed inside the body"
        body += chunk
    return int(status_line.split(" ")[1]), headers, body


def _is_closed(connection: socket.socket) -> bool:
    return connection.recv(1) == b""


def test_a_body_that_never_comes_is_a_408_problem(server: tuple[str, int]) -> None:
    with _connect(server) as connection:
        connection.sendall(
            b"POST /v1/creators HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n"
        )
        status, headers, body = _read_response(connection)
        assert (status, headers["content-type"]) == (408, "application/problem+json")
        problem = json.loads(body)
        assert (problem["type"], problem["status"]) == (
            "https://stallholder.dev/problems/request-timeout",
            408,
        )
        assert _is_closed(connection)


def test_a_body_that_stops_half_way_is_a_408(server: tuple[str, int]) -> None:
    with _connect(server) as connection:
        connection.sendall(
            b"POST /v1/creators HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"display_name": '
        )
        status, _, _ = _read_response(connection)
        assert status == 408


def test_a_head_that_never_ends_is_a_408_and_the_connection_closes(
    server: tuple[str, int],
) -> None:
    with _connect(server) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line
        status, _, body = _read_response(connection)
        assert (status, body) == (408, b"the request head did not arrive in time\n")
        assert _is_closed(connection)


def test_a_connection_that_sends_nothing_is_closed_with_a_408(server: tuple[str, int]) -> None:
    with _connect(server) as connection:
        status, _, _ = _read_response(connection)
        assert status == 408


def test_the_next_heads_deadline_starts_after_a_response(server: tuple[str, int]) -> None:
    with _connect(server) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = _read_response(connection)
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        connection.sendall(b"GET /healthz HTTP/1.1\r\n")  # the second request stalls
        status, _, _ = _read_response(connection)
        assert status == 408
        assert _is_closed(connection)


def test_prompt_requests_are_untouched(server: tuple[str, int]) -> None:
    with _connect(server) as connection:
        payload = b'{"display_name": "X", "email": "x@example.com"}'
        connection.sendall(
            b"POST /v1/creators HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        status, _, _ = _read_response(connection)
        assert status == 401  # it reached the route, which wants the admin key
