"""Checkout throughput: create a session and confirm it with ``tok_visa``, over real HTTP
against ``stallholder serve`` (uvicorn, embedded worker on), on SQLite and PostgreSQL,
beside a bare FastAPI POST endpoint measured in the same run."""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, func, select, text

from bench import harness
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


def _measure_stallholder(
    database_url: str, workdir: Path, *, concurrency: int, warmup: float, duration: float
) -> dict[str, Any]:
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
    ]
    with harness.server(command, env=env, port=port, log=workdir / "serve.log") as base:
        key, price = asyncio.run(_shop(base))
        auth = {"Authorization": f"Bearer {key}"}
        run = uuid.uuid4().hex[:8]

        async def sale(client: httpx.AsyncClient, n: int) -> None:
            created = await client.post(
                "/v1/checkout/sessions",
                headers={**auth, "Idempotency-Key": f"{run}-create-{n}"},
                json={
                    "line_items": [{"price": price, "quantity": 2}],
                    "customer_email": f"buyer{n}@example.com",
                },
            )
            created.raise_for_status()
            confirmed = await client.post(
                f"/v1/checkout/sessions/{created.json()['id']}/confirm",
                headers={**auth, "Idempotency-Key": f"{run}-confirm-{n}"},
                json={"payment_method": "tok_visa"},
            )
            confirmed.raise_for_status()

        load = asyncio.run(
            harness.closed_loop(
                sale, base=base, concurrency=concurrency, warmup=warmup, duration=duration
            )
        )
    verify = _stallholder("ledger", "verify", env=env)
    engine = create_engine(sync_url(database_url))
    with engine.connect() as connection:
        orders = int(connection.execute(select(func.count()).select_from(Order)).scalar_one())
    engine.dispose()
    return {
        **load.summary(),
        "sales_including_warmup": load.total_completed,
        "orders_in_database": orders,
        "ledger_verify_exit": verify.returncode,
    }


def _measure_bare(workdir: Path, *, concurrency: int, warmup: float, duration: float) -> Any:
    port = harness.free_port()
    command = harness.uvicorn_command("bench.bare_app:app", port)
    with harness.server(command, env={}, port=port, log=workdir / "bare.log") as base:

        async def echo(client: httpx.AsyncClient, n: int) -> None:
            response = await client.post("/echo", json={"n": n, "customer": "a@example.com"})
            response.raise_for_status()

        load = asyncio.run(
            harness.closed_loop(
                echo, base=base, concurrency=concurrency, warmup=warmup, duration=duration
            )
        )
    return load.summary()


def run(*, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
    results: dict[str, Any] = {
        "concurrency": concurrency,
        "warmup_seconds": warmup,
        "duration_seconds": duration,
        "iteration": "POST /v1/checkout/sessions (2 x $15.00) + POST .../confirm tok_visa",
    }
    with tempfile.TemporaryDirectory(prefix="stallholder-bench-") as tmp:
        workdir = Path(tmp)
        settings: dict[str, Any] = {
            "concurrency": concurrency,
            "warmup": warmup,
            "duration": duration,
        }
        results["bare_fastapi"] = _measure_bare(workdir, **settings)
        sqlite_dir = workdir / "sqlite"
        sqlite_dir.mkdir()
        results["sqlite"] = _measure_stallholder(
            f"sqlite:///{sqlite_dir / 'bench.db'}", sqlite_dir, **settings
        )
        created = _create_postgres_database()
        if created is not None:
            url, name = created
            postgres_dir = workdir / "postgres"
            postgres_dir.mkdir()
            try:
                results["postgresql"] = _measure_stallholder(url, postgres_dir, **settings)
            finally:
                _drop_postgres_database(name)
    bare = results["bare_fastapi"]
    for database in ("sqlite", "postgresql"):
        if database in results and results[database]["per_second"]:
            measured = results[database]
            measured["bare_per_second_over_sessions_per_second"] = round(
                bare["per_second"] / measured["per_second"], 1
            )
            measured["p50_over_bare_p50"] = round(measured["p50_ms"] / bare["p50_ms"], 1)
    return results
