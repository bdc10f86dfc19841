"""Server CPU per sale: Stallholder beside the floor app, on SQLite and PostgreSQL.

A Stallholder sale is ``POST /v1/checkout/sessions`` (2 x $15.00) and ``POST …/confirm``
with ``tok_visa``, each with its own ``Idempotency-Key``, over real HTTP against
``stallholder serve``. A floor sale is one ``POST /v1/sales`` to ``bench/floor_app.py``,
which runs the same 14 statements in one transaction on the same stack. For each target
the load generator (``bench.loadgen``, its own process) warms up; then, with both served
side by side, the floor and Stallholder are measured in alternation, ``rounds`` times per
client count (default 3), and the ratio reported is the median round's, so a shared
machine's drift between rounds moves both sides of a ratio. Around each run the server's
whole process tree CPU (and, on PostgreSQL, its database backends' CPU) is read from
/proc, after the server has gone idle again so the work a sale leaves behind (outbox
dispatch, email) is counted too. A bare FastAPI POST
endpoint gives the cost of HTTP alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.table import Table
from sqlalchemy import create_engine, func, select, text

from bench import floor_app, harness
from stallholder.kit.db import sync_url
from stallholder.orders.models import Order

NAME = "checkout"
ADMIN_KEY = "admin_bench_key"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def _postgres_base() -> str:
    return (
        os.environ.get("STALLHOLDER_BENCH_POSTGRES_URL")
        or os.environ.get("STALLHOLDER_TEST_POSTGRES_URL")
        or DEFAULT_POSTGRES
    )


def _create_postgres_database() -> tuple[str, str] | None:
    """A fresh database for the run: (its URL, its name), or None when PostgreSQL is away."""
    base = _postgres_base()
    name = f"stallholder_bench_{uuid.uuid4().hex[:8]}"
    try:
        admin = create_engine(sync_url(base), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception as error:
        print(f"PostgreSQL skipped: {base} is not reachable ({type(error).__name__})")
        return None
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}", name


def _drop_postgres_database(name: str) -> None:
    admin = create_engine(sync_url(_postgres_base()), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _stallholder(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own command
        [str(harness.BIN / "stallholder"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )


async def _shop(base: str) -> tuple[str, str]:
    """A creator with one published product and a $15.00 price: (secret key, price id)."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        creator = await http.post(
            "/v1/creators",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            json={"display_name": "Bench Press", "email": "bench@example.com"},
        )
        key = creator.json()["secret_key"]
        auth = {"Authorization": f"Bearer {key}"}
        product = await http.post(
            "/v1/products",
            headers=auth,
            json={"kind": "digital", "name": "Bench zine", "status": "published"},
        )
        price = await http.post(
            "/v1/prices",
            headers=auth,
            json={"product": product.json()["id"], "unit_amount": 1500, "currency": "usd"},
        )
        return key, price.json()["id"]


# How ``stallholder serve`` runs in the benchmark on each database: the best measured
# configuration on the benchmark machine (docs/performance.md). SQLite has one writer, so
# one process with the embedded worker. On PostgreSQL ``--workers 2`` (two server processes
# and a worker process) cost 14 % more CPU per sale on two cores shared with the database
# and the load generator, so one process there too; try ``--serve 'postgresql=--workers 2'``
# on a machine with cores to spare.
SERVE_OPTIONS: dict[str, list[str]] = {"sqlite": [], "postgresql": []}
# Measured rounds per client count, floor and Stallholder in alternation; the ratio is the
# median round's (docs/performance.md: one run of either moves 10-20 % on a shared machine).
DEFAULT_ROUNDS = 3
MAX_SALES_PER_RUN = 200_000


def _count(url: str, table: Any) -> int:
    engine = create_engine(sync_url(url))
    with engine.connect() as connection:
        count = int(connection.execute(select(func.count()).select_from(table)).scalar_one())
    engine.dispose()
    return count


class _DatabaseCpu:
    """CPU of the PostgreSQL backends serving one database, from /proc (nothing on SQLite:
    it runs inside the server process and is counted there)."""

    def __init__(self, url: str) -> None:
        self.engine = None if url.startswith("sqlite") else create_engine(sync_url(url))

    def snapshot(self) -> dict[int, float]:
        if self.engine is None:
            return {}
        with self.engine.connect() as connection:
            pids = connection.execute(
                text(
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalars()
            return {pid: harness.processes_cpu_seconds([pid]) for pid in pids}

    def dispose(self) -> None:
        if self.engine is not None:
            self.engine.dispose()


def _one_run(
    *, pid: int, database_cpu: _DatabaseCpu, spec: dict[str, Any], clients: int, duration: float
) -> dict[str, Any]:
    """One measured run of ``clients`` clients; the server's CPU is read until it is idle
    again, so the work a sale leaves behind (outbox, email) is counted too."""

    def server_cpu() -> float:
        return harness.tree_cpu_seconds(pid)

    harness.wait_until_idle(server_cpu)
    cpu_before, db_before = server_cpu(), database_cpu.snapshot()
    load = harness.run_load(
        {**spec, "concurrency": clients, "duration": duration, "max_iterations": MAX_SALES_PER_RUN}
    )
    loaded_cpu = server_cpu()
    drained_seconds = harness.wait_until_idle(server_cpu)
    cpu_after, db_after = server_cpu(), database_cpu.snapshot()
    latencies = sorted(load["latencies"])
    sales = len(latencies)
    db_seconds = sum(seconds - db_before.get(p, 0.0) for p, seconds in db_after.items())
    return {
        "sales": sales,
        "errors": load["errors"],
        "first_errors": load["first_errors"],
        "sales_per_second": round(sales / load["elapsed"], 1),
        "p50_ms": round(harness.percentile(latencies, 50) * 1000, 1),
        "p99_ms": round(harness.percentile(latencies, 99) * 1000, 1),
        "server_cpu_ms_per_sale": round((cpu_after - cpu_before) * 1000 / sales, 2)
        if sales
        else None,
        "server_cores_busy_under_load": round((loaded_cpu - cpu_before) / load["elapsed"], 2),
        "database_cpu_ms_per_sale": round(db_seconds * 1000 / sales, 2)
        if sales and database_cpu.engine is not None
        else None,
        "drain_seconds": drained_seconds,
    }


@dataclass
class _Target:
    """A served app under measurement: its load spec, its process, and what it sold."""

    pid: int
    spec: dict[str, Any]
    database_cpu: _DatabaseCpu
    sales: int = 0
    rounds: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def warm(self, *, clients: int, seconds: float) -> None:
        warm = harness.run_load(
            {**self.spec, "concurrency": clients, "duration": seconds, "max_iterations": 50_000}
        )
        self.sales += len(warm["latencies"])

    def measure(self, *, clients: int, duration: float) -> dict[str, Any]:
        run = _one_run(
            pid=self.pid,
            database_cpu=self.database_cpu,
            spec=self.spec,
            clients=clients,
            duration=duration,
        )
        self.sales += run["sales"]
        self.rounds.setdefault(str(clients), []).append(run)
        return run


@contextlib.contextmanager
def _stallholder_served(
    database_url: str, workdir: Path, *, serve_options: list[str]
) -> Iterator[tuple[_Target, dict[str, str]]]:
    env = {
        "STALLHOLDER_DATABASE_URL": database_url,
        "STALLHOLDER_ADMIN_KEY": ADMIN_KEY,
        "STALLHOLDER_DATA_DIR": str(workdir / "var"),
    }
    migrated = _stallholder("migrate", env=env)
    if migrated.returncode != 0:
        raise RuntimeError(f"migrate failed: {migrated.stdout}{migrated.stderr}")
    port = harness.free_port()
    command = [
        str(harness.BIN / "stallholder"),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *serve_options,
    ]
    with harness.served(command, env=env, port=port, log=workdir / "serve.log") as (base, pid):
        key, price = asyncio.run(_shop(base))
        spec = {"port": port, "scenario": "stallholder_sale", "secret_key": key, "price": price}
        database_cpu = _DatabaseCpu(database_url)
        try:
            yield _Target(pid=pid, spec=spec, database_cpu=database_cpu), env
        finally:
            database_cpu.dispose()


@contextlib.contextmanager
def _floor_served(database_url: str, workdir: Path) -> Iterator[_Target]:
    floor_app.create_schema(database_url)
    port = harness.free_port()
    command = harness.uvicorn_command("bench.floor_app:app", port)
    env = {"FLOOR_DATABASE_URL": database_url, "PYTHONPATH": str(harness.ROOT)}
    with harness.served(command, env=env, port=port, log=workdir / "floor.log") as (_, pid):
        spec = {"port": port, "scenario": "floor_sale", "price": floor_app.PRICE}
        database_cpu = _DatabaseCpu(database_url)
        try:
            yield _Target(pid=pid, spec=spec, database_cpu=database_cpu)
        finally:
            database_cpu.dispose()


def _measure_bare(workdir: Path, *, clients: int, warmup: float, duration: float) -> Any:
    port = harness.free_port()
    command = harness.uvicorn_command("bench.bare_app:app", port)
    with harness.served(command, env={}, port=port, log=workdir / "bare.log") as (_, pid):
        cpu_before = harness.tree_cpu_seconds(pid)
        load = harness.run_load(
            {
                "port": port,
                "scenario": "bare",
                "concurrency": clients,
                "duration": duration,
                "max_iterations": 10 * MAX_SALES_PER_RUN,
            }
        )
        cpu = harness.tree_cpu_seconds(pid) - cpu_before
    latencies = sorted(load["latencies"])
    return {
        "requests": len(latencies),
        "clients": clients,
        "requests_per_second": round(len(latencies) / load["elapsed"], 1),
        "p50_ms": round(harness.percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(harness.percentile(latencies, 99) * 1000, 2),
        "server_cpu_ms_per_request": round(cpu * 1000 / len(latencies), 3) if latencies else None,
    }


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round whose server CPU per sale is the median (the lower middle of an even count)."""
    ordered = sorted(runs, key=lambda run: run["server_cpu_ms_per_sale"] or 0.0)
    return {**ordered[(len(ordered) - 1) // 2], "rounds": len(runs)}


def _database(
    name: str,
    url: str,
    workdir: Path,
    *,
    serve_options: list[str],
    clients: list[int],
    warmup: float,
    duration: float,
    rounds: int,
) -> dict[str, Any]:
    """Both apps served side by side (idle while the other is measured), warmed, then
    measured in alternation, ``rounds`` times per client count: floor, Stallholder, floor,
    … A ratio is taken within each round, so a shared machine that slows down or speeds
    up between rounds moves both sides of it; the ratio reported is the median round's."""
    floor_dir, stallholder_dir = workdir / "floor", workdir / "stallholder"
    floor_dir.mkdir()
    stallholder_dir.mkdir()
    floor_url = url if name == "postgresql" else f"sqlite:///{floor_dir / 'floor.db'}"
    stallholder_url = url if name == "postgresql" else f"sqlite:///{stallholder_dir / 'db'}"
    with (
        _floor_served(floor_url, floor_dir) as floor,
        _stallholder_served(stallholder_url, stallholder_dir, serve_options=serve_options) as (
            stallholder,
            env,
        ),
    ):
        for target in (floor, stallholder):
            target.warm(clients=max(clients), seconds=warmup)
        ratios: dict[str, list[float]] = {}
        for _ in range(rounds):
            for count in clients:
                floor_run = floor.measure(clients=count, duration=duration)
                run = stallholder.measure(clients=count, duration=duration)
                if floor_run["server_cpu_ms_per_sale"] and run["server_cpu_ms_per_sale"]:
                    ratios.setdefault(str(count), []).append(
                        run["server_cpu_ms_per_sale"] / floor_run["server_cpu_ms_per_sale"]
                    )
    verify = _stallholder("ledger", "verify", env=env)
    orders = _count(stallholder_url, Order.__table__)
    floor_orders = _count(floor_url, floor_app.orders)
    return {
        "floor": {
            "serving": "uvicorn bench.floor_app:app (one process)",
            "runs": {count: _median_run(runs) for count, runs in floor.rounds.items()},
            "rounds": floor.rounds,
            "checks": {
                "sales_including_warmup": floor.sales,
                "orders_in_database": floor_orders,
                "is_clean": floor_orders == floor.sales,
            },
        },
        "stallholder": {
            "serving": " ".join(["stallholder serve", *serve_options]),
            "runs": {count: _median_run(runs) for count, runs in stallholder.rounds.items()},
            "rounds": stallholder.rounds,
            "checks": {
                "sales_including_warmup": stallholder.sales,
                "orders_in_database": orders,
                "ledger_verify_exit": verify.returncode,
                "is_clean": orders == stallholder.sales and verify.returncode == 0,
            },
        },
        "server_cpu_ratio": {
            count: round(statistics.median(values), 2) for count, values in ratios.items()
        },
        "server_cpu_ratio_by_round": {
            count: [round(value, 2) for value in values] for count, values in ratios.items()
        },
    }


def run(
    *,
    clients: list[int],
    warmup: float,
    duration: float,
    rounds: int = DEFAULT_ROUNDS,
    serve_options: dict[str, list[str]] | None = None,
    databases: tuple[str, ...] = ("sqlite", "postgresql"),
) -> dict[str, Any]:
    options = {**SERVE_OPTIONS, **(serve_options or {})}
    results: dict[str, Any] = {
        "clients": clients,
        "warmup_seconds": warmup,
        "duration_seconds": duration,
        "rounds": rounds,
        "sale": {
            "stallholder": "POST /v1/checkout/sessions (2 x $15.00) + POST .../confirm "
            "tok_visa, each with an Idempotency-Key",
            "floor": "POST /v1/sales: 14 statements in one transaction (bench/floor_app.py)",
        },
        "goal": "stallholder server CPU per sale <= 3 x the floor's",
    }
    settings: dict[str, Any] = {
        "clients": clients,
        "warmup": warmup,
        "duration": duration,
        "rounds": rounds,
    }
    with tempfile.TemporaryDirectory(prefix="stallholder-bench-") as tmp:
        workdir = Path(tmp)
        results["bare_fastapi"] = _measure_bare(
            workdir, clients=clients[0], warmup=warmup, duration=min(duration, 10.0)
        )
        if "sqlite" in databases:
            sqlite_dir = workdir / "sqlite"
            sqlite_dir.mkdir()
            results["sqlite"] = _database(
                "sqlite", "", sqlite_dir, serve_options=options["sqlite"], **settings
            )
        created = _create_postgres_database() if "postgresql" in databases else None
        if created is not None:
            url, name = created
            postgres_dir = workdir / "postgres"
            postgres_dir.mkdir()
            try:
                results["postgresql"] = _database(
                    "postgresql",
                    url,
                    postgres_dir,
                    serve_options=options["postgresql"],
                    **settings,
                )
            finally:
                _drop_postgres_database(name)
    return results


def table(results: dict[str, Any]) -> Table:
    """One row per target and client count."""
    table = Table(
        title="checkout: server CPU per sale (create + confirm) beside the floor; each row the "
        "median of its rounds, the ratio the median round's (each round's)"
    )
    for column in ("database", "target", "clients", "sales", "errors", "sales/s", "p50 ms"):
        table.add_column(column, justify="left" if column in ("database", "target") else "right")
    for column in ("p99 ms", "server CPU ms/sale", "db CPU ms/sale", "ratio", "checks"):
        table.add_column(column, justify="right")
    for database in ("sqlite", "postgresql"):
        if database not in results:
            continue
        measured = results[database]
        for target in ("floor", "stallholder"):
            entry = measured[target]
            for count, run in entry["runs"].items():
                ratio: Any = 1
                if target == "stallholder":
                    rounds = measured["server_cpu_ratio_by_round"].get(count, [])
                    each = ", ".join(map(str, rounds))
                    ratio = f"{measured['server_cpu_ratio'].get(count)}x ({each})"
                table.add_row(
                    database,
                    f"{target} ({entry['serving']})",
                    count,
                    str(run["sales"]),
                    str(run["errors"]),
                    str(run["sales_per_second"]),
                    str(run["p50_ms"]),
                    str(run["p99_ms"]),
                    str(run["server_cpu_ms_per_sale"]),
                    str(run["database_cpu_ms_per_sale"] or "-"),
                    ratio if isinstance(ratio, str) else f"{ratio}x",
                    "ok" if entry["checks"]["is_clean"] else f"FAILED {entry['checks']}",
                )
    bare = results.get("bare_fastapi")
    if bare:
        table.caption = (
            f"bare FastAPI POST, {bare['clients']} clients: {bare['requests_per_second']} req/s, "
            f"{bare['server_cpu_ms_per_request']} ms server CPU per request (HTTP alone). "
            f"Python {sys.version.split()[0]}."
        )
    return table
