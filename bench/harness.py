"""What every benchmark shares: free ports, servers in subprocesses, the load generator in
its own process (``bench.loadgen``), CPU of process trees from /proc, percentiles, and the
machine description written beside each result."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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
    with served(command, env=env, port=port, log=log) as (base, _pid):
        yield base


@contextlib.contextmanager
def served(
    command: list[str], *, env: dict[str, str], port: int, log: Path
) -> Iterator[tuple[str, int]]:
    """As ``server``, and also the process id whose process tree is the server."""
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
            yield base, process.pid
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


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        return 0.0
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


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


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int | str) -> tuple[int, int, int] | None:
    """(parent pid, CPU ticks of the process, CPU ticks of its reaped children)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:  # gone, or not ours to read
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    # fields[0] is field 3 of proc(5): state, ppid, …, utime (14), stime, cutime, cstime.
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of ``root`` and every live descendant, plus what their reaped
    children used (``cutime``/``cstime``), read from /proc."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(entry)) is not None:
            stats[int(entry)] = stat
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    ticks, pending = 0, [root]
    while pending:
        pid = pending.pop()
        if pid in stats:
            _, own, reaped = stats[pid]
            ticks += own + reaped
        pending.extend(children.get(pid, ()))
    return ticks / CLOCK_TICKS


def processes_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes (PostgreSQL backends, say), from /proc."""
    ticks = 0
    for pid in pids:
        if (stat := _proc_stat(pid)) is not None:
            ticks += stat[1]
    return ticks / CLOCK_TICKS


def postgres_cpu(url: str) -> Callable[[], float] | None:
    """A reader of PostgreSQL's CPU seconds so far: its postmaster's process tree (every
    backend, the WAL writer, the checkpointer, and the backends that have exited), when
    the server runs on this machine where its processes can be read; else None."""
    from sqlalchemy import create_engine, text

    from stallholder.kit.db import sync_url

    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            backend = int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())
    finally:
        engine.dispose()
    stat = _proc_stat(backend)
    if stat is None:
        return None
    postmaster = stat[0]
    return lambda: tree_cpu_seconds(postmaster)


def wait_until_idle(
    cpu: Callable[[], float], *, quiet_cpu: float = 0.03, window: float = 1.0, limit: float = 60
) -> float:
    """Wait until ``cpu()`` grows by less than ``quiet_cpu`` seconds over ``window`` seconds
    (the server has finished what the load left behind: outbox, emails), at most ``limit``
    seconds. Returns how long it waited."""
    start = time.monotonic()
    samples = [(start, cpu())]
    while time.monotonic() - start < limit:
        time.sleep(window / 4)
        now = time.monotonic()
        samples.append((now, cpu()))
        older = [sample for sample in samples if sample[0] <= now - window]
        if older and samples[-1][1] - older[-1][1] < quiet_cpu:
            break
    return round(time.monotonic() - start, 2)


def run_load(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``bench.loadgen`` in its own process with ``spec``; its JSON result."""
    bound = spec["duration"] + 120  # the generator stops itself; this only guards a hang
    completed = subprocess.run(  # noqa: S603 - our own module
        [str(BIN / "python"), "-m", "bench.loadgen", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=True,
        timeout=bound,
        cwd=ROOT,
    )
    result: dict[str, Any] = json.loads(completed.stdout)
    return result
