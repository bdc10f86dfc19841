"""What every benchmark shares: free ports, servers in subprocesses, a closed-loop load
generator, percentiles, and the machine description written beside each result."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def server(command: list[str], *, env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    """Start ``command`` (a uvicorn-serving process), wait for ``/healthz``, stop it after."""
    with log.open("w") as output:
        process = subprocess.Popen(  # noqa: S603 - our own commands
            command, env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{command[0]} exited early; see {log}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{command[0]} did not answer within 60 s; see {log}")
                time.sleep(0.2)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def uvicorn_command(app: str, port: int) -> list[str]:
    """The bare app is served with the same uvicorn options as ``stallholder serve``."""
    return [
        str(BIN / "python"),
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]


@dataclass
class Load:
    """Latencies (seconds) of every completed iteration, and how long the run took."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0
    total_completed: int = 0  # warm-up included: what the database should hold

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.latencies)
        return {
            "completed": len(ordered),
            "errors": self.errors,
            "per_second": round(len(ordered) / self.elapsed, 1) if self.elapsed else 0.0,
            "p50_ms": round(percentile(ordered, 50) * 1000, 2),
            "p99_ms": round(percentile(ordered, 99) * 1000, 2),
        }


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        return 0.0
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


async def closed_loop(
    iteration: Callable[[httpx.AsyncClient, int], Awaitable[None]],
    *,
    base: str,
    concurrency: int,
    warmup: float,
    duration: float,
) -> Load:
    """``concurrency`` clients, each running ``iteration`` back to back: a warm-up that is
    not counted, then ``duration`` seconds that are."""
    load = Load()
    counter = iter(range(10**9))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        start = time.monotonic()
        measure_from = start + warmup
        stop_at = measure_from + duration

        async def run_client() -> None:
            while (now := time.monotonic()) < stop_at:
                try:
                    await iteration(client, next(counter))
                except Exception:
                    if now >= measure_from:
                        load.errors += 1
                    continue
                load.total_completed += 1
                if now >= measure_from:
                    load.latencies.append(time.monotonic() - now)

        await asyncio.gather(*(run_client() for _ in range(concurrency)))
        load.elapsed = time.monotonic() - measure_from
    return load


def machine() -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    ).stdout.strip()
    memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {
        "cpus": os.cpu_count(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit,
    }
