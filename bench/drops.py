"""Drop storm: 200 concurrent buyers on one drop over real HTTP, beside PostgreSQL's own
rate for the conditional UPDATE that is a reservation's hot spot.

1. **Storm.** ``stallholder serve`` on a fresh PostgreSQL database, one drop with more
   units than the run can sell, so every attempt is a real hold. 200 closed-loop clients
   (``bench.loadgen``, scenario ``drop_attempt``) each create checkout sessions for one
   unit under their own email: reservation attempts per second and p50/p99 latency.
2. **Sell-out.** A second drop of ``SELL_OUT_UNITS`` units; 200 buyers each try once to
   reserve and pay (``drop_buy``): exactly that many orders, the rest a 409, nothing
   oversold (checked in the database: sold ≤ quantity, orders = sold, no session
   holding a unit beyond the quantity).
3. **After sold out.** The same 200 clients keep arriving at the sold-out drop for
   ``--duration`` seconds: every attempt is a 409 ``out-of-stock`` (attempts/s, latency,
   server CPU per attempt).
4. **Raw rate.** In the same database, ``RAW_CONNECTIONS`` psycopg connections in
   autocommit run ``UPDATE … SET held = held + 1 WHERE id = 1 AND quantity - held - sold
   >= 1`` on one row as fast as they can: the most PostgreSQL does for that row here.

5. **Floor.** The same 200 clients on ``bench.floor_app``'s ``POST /v1/holds`` (a hold
   row and the conditional update of one hot row, one transaction) served by uvicorn on
   the same stack: what any hold over HTTP in Python costs here at least.

The goal (issue 9): reservation attempts/s ≥ 50 % of the raw rate, p99 < 100 ms.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx
import psycopg
from rich.table import Table
from sqlalchemy import create_engine, func, select

from bench import floor_app, harness
from bench.checkout import (
    ADMIN_KEY,
    _create_postgres_database,
    _drop_postgres_database,
    _stallholder,
)
from stallholder.inventory.models import DropItem
from stallholder.kit.db import sync_url
from stallholder.orders.models import Order

NAME = "drops"
BUYERS = 200
SELL_OUT_UNITS = 20
STORM_UNITS = 1_000_000
RAW_CONNECTIONS = 16


async def _shop(base: str) -> tuple[str, str, str]:
    """A creator, and two drops open now of one $48.00 price each: (secret key, the
    storm's price, the sell-out's price)."""
    now = datetime.now(UTC)
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        creator = await http.post(
            "/v1/creators",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            json={"display_name": "Kiln Bench", "email": "bench@example.com"},
        )
        key = creator.json()["secret_key"]
        auth = {"Authorization": f"Bearer {key}"}
        prices = []
        for name, units in (("storm", STORM_UNITS), ("sell-out", SELL_OUT_UNITS)):
            product = await http.post(
                "/v1/products",
                headers=auth,
                json={"kind": "digital", "name": f"Mug {name}", "status": "published"},
            )
            price = (
                await http.post(
                    "/v1/prices",
                    headers=auth,
                    json={"product": product.json()["id"], "unit_amount": 4800, "currency": "usd"},
                )
            ).json()["id"]
            drop = await http.post(
                "/v1/drops",
                headers=auth,
                json={
                    "name": f"Winter mugs ({name})",
                    "opens_at": (now - timedelta(minutes=1)).isoformat(),
                    "closes_at": (now + timedelta(days=1)).isoformat(),
                    "per_customer_limit": 1,
                    "reservation_minutes": 60,
                    "items": [{"price": price, "quantity": units}],
                },
            )
            drop.raise_for_status()
            prices.append(price)
        return key, prices[0], prices[1]


def _latency(load: dict[str, Any]) -> dict[str, Any]:
    latencies = sorted(load["latencies"])
    return {
        "attempts": len(latencies),
        "errors": load["errors"],
        "first_errors": load["first_errors"],
        "attempts_per_second": round(len(latencies) / load["elapsed"], 1),
        "p50_ms": round(harness.percentile(latencies, 50) * 1000, 1),
        "p99_ms": round(harness.percentile(latencies, 99) * 1000, 1),
    }


def _drop_counts(url: str, price: str) -> tuple[int, int, int]:
    engine = create_engine(sync_url(url))
    with engine.connect() as connection:
        item = connection.execute(
            select(DropItem.quantity, DropItem.held, DropItem.sold).where(
                DropItem.price_id == price
            )
        ).one()
        orders = int(connection.execute(select(func.count()).select_from(Order)).scalar_one())
    engine.dispose()
    return int(item.quantity) - int(item.held) - int(item.sold), int(item.sold), orders


async def _raw_rate(url: str, duration: float) -> dict[str, Any]:
    """The conditional UPDATE on one hot row, from ``RAW_CONNECTIONS`` connections."""
    conninfo = sync_url(url).replace("postgresql+psycopg://", "postgresql://")
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as setup:
        await setup.execute(
            "CREATE TABLE bench_hot (id int PRIMARY KEY, quantity bigint, held bigint, sold bigint)"
        )
        await setup.execute("INSERT INTO bench_hot VALUES (1, 1000000000, 0, 0)")
    latencies: list[float] = []
    stop_at = time.monotonic() + duration

    async def client() -> None:
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as db:
            while (began := time.monotonic()) < stop_at:
                await db.execute(
                    "UPDATE bench_hot SET held = held + 1 "
                    "WHERE id = 1 AND quantity - held - sold >= 1"
                )
                latencies.append(time.monotonic() - began)

    start = time.monotonic()
    await asyncio.gather(*(client() for _ in range(RAW_CONNECTIONS)))
    elapsed = time.monotonic() - start
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as setup:
        await setup.execute("DROP TABLE bench_hot")
    ordered = sorted(latencies)
    return {
        "connections": RAW_CONNECTIONS,
        "updates": len(ordered),
        "updates_per_second": round(len(ordered) / elapsed, 1),
        "p50_ms": round(harness.percentile(ordered, 50) * 1000, 2),
        "p99_ms": round(harness.percentile(ordered, 99) * 1000, 2),
    }


def _floor_storm(url: str, workdir: Path, *, warmup: float, duration: float) -> dict[str, Any]:
    """The same 200 closed-loop clients on the floor app's hold (``bench.floor_app``): a
    hold row and the conditional update of one hot row in one transaction, on the same
    stack (FastAPI, uvicorn, async SQLAlchemy Core, psycopg, ``kit.db``'s engine)."""
    floor_app.create_drop_item(url, quantity=STORM_UNITS)
    port = harness.free_port()
    command = harness.uvicorn_command("bench.floor_app:app", port)
    env = {"FLOOR_DATABASE_URL": url, "PYTHONPATH": str(harness.ROOT)}
    with harness.served(command, env=env, port=port, log=workdir / "floor.log") as (_, pid):
        spec = {
            "port": port,
            "concurrency": BUYERS,
            "scenario": "floor_hold",
            "price": floor_app.DROP_ITEM,
        }
        harness.run_load(spec | {"duration": warmup, "max_iterations": 100_000})
        cpu_before = harness.tree_cpu_seconds(pid)
        floor = _latency(
            harness.run_load(spec | {"duration": duration, "max_iterations": 1_000_000})
        )
        harness.wait_until_idle(lambda: harness.tree_cpu_seconds(pid))
        cpu = harness.tree_cpu_seconds(pid) - cpu_before
    floor["server_cpu_ms_per_attempt"] = (
        round(cpu * 1000 / floor["attempts"], 2) if floor["attempts"] else None
    )
    return floor


def run(
    *, warmup: float, duration: float, serve_options: list[str] | None = None, **_: Any
) -> dict[str, Any]:
    created = _create_postgres_database()
    if created is None:
        return {"skipped": "PostgreSQL is not reachable"}
    url, name = created
    try:
        with TemporaryDirectory(prefix="stallholder-drops-") as tmp:
            workdir = Path(tmp)
            env = {
                "STALLHOLDER_DATABASE_URL": url,
                "STALLHOLDER_ADMIN_KEY": ADMIN_KEY,
                "STALLHOLDER_DATA_DIR": str(workdir / "var"),
                # Every buyer of the storm comes from 127.0.0.1: lift the per-IP limit (the
                # per-buyer one stays on, each buyer has one attempt, so the storm still
                # pays the limiter's one statement per attempt).
                "STALLHOLDER_DROP_RATE_LIMIT_PER_IP": "0",
            }
            migrated = _stallholder("migrate", env=env)
            if migrated.returncode != 0:
                raise RuntimeError(f"migrate failed: {migrated.stdout}{migrated.stderr}")
            port = harness.free_port()
            command = [str(harness.BIN / "stallholder"), "serve", "--host", "127.0.0.1"]
            command += ["--port", str(port), *(serve_options or [])]
            with harness.served(command, env=env, port=port, log=workdir / "serve.log") as (
                base,
                pid,
            ):
                key, storm_price, sell_out_price = asyncio.run(_shop(base))
                spec = {"port": port, "secret_key": key, "concurrency": BUYERS}
                harness.run_load(
                    {**spec, "scenario": "drop_attempt", "price": storm_price}
                    | {"duration": warmup, "max_iterations": 100_000}
                )
                cpu_before = harness.tree_cpu_seconds(pid)
                storm = _latency(
                    harness.run_load(
                        {**spec, "scenario": "drop_attempt", "price": storm_price}
                        | {"duration": duration, "max_iterations": 1_000_000}
                    )
                )
                harness.wait_until_idle(lambda: harness.tree_cpu_seconds(pid))
                cpu = harness.tree_cpu_seconds(pid) - cpu_before
                storm["server_cpu_ms_per_attempt"] = (
                    round(cpu * 1000 / storm["attempts"], 2) if storm["attempts"] else None
                )
                sell_out = _latency(
                    harness.run_load(
                        {**spec, "scenario": "drop_buy", "price": sell_out_price}
                        | {"duration": 120, "max_iterations": BUYERS}
                    )
                )
                # The crowd that arrives after the last unit went: every attempt a 409.
                harness.wait_until_idle(lambda: harness.tree_cpu_seconds(pid))
                cpu_before = harness.tree_cpu_seconds(pid)
                sold_out = _latency(
                    harness.run_load(
                        {**spec, "scenario": "drop_attempt", "price": sell_out_price}
                        | {"duration": duration, "max_iterations": 1_000_000}
                    )
                )
                harness.wait_until_idle(lambda: harness.tree_cpu_seconds(pid))
                cpu = harness.tree_cpu_seconds(pid) - cpu_before
                sold_out["server_cpu_ms_per_attempt"] = (
                    round(cpu * 1000 / sold_out["attempts"], 2) if sold_out["attempts"] else None
                )
            left, sold, orders = _drop_counts(url, sell_out_price)
            sell_out |= {
                "units": SELL_OUT_UNITS,
                "sold": sold,
                "orders": orders,
                "left": left,
                "oversold": max(0, sold - SELL_OUT_UNITS),
                "is_clean": sold == SELL_OUT_UNITS and orders == sold and left == 0,
            }
            floor = _floor_storm(url, workdir, warmup=warmup, duration=duration)
            raw = asyncio.run(_raw_rate(url, duration))
            log_lines = (workdir / "serve.log").read_text(errors="replace").splitlines()
            server_errors = sorted(
                {line.strip()[:300] for line in log_lines if "Error" in line or "error" in line}
            )[:20]
    finally:
        _drop_postgres_database(name)
    ratio = round(storm["attempts_per_second"] / raw["updates_per_second"], 3)
    floor["ratio_of_raw"] = round(floor["attempts_per_second"] / raw["updates_per_second"], 3)
    return {
        "buyers": BUYERS,
        "serving": " ".join(["stallholder serve", *(serve_options or [])]),
        "duration_seconds": duration,
        "storm": storm,
        "sell_out": sell_out,
        "after_sold_out": sold_out,
        "floor_hold": floor,
        "raw_conditional_update": raw,
        "ratio_of_raw": ratio,
        "ratio_of_floor": round(storm["attempts_per_second"] / floor["attempts_per_second"], 3),
        "server_errors": server_errors,
        "goal": "attempts/s >= 50% of the raw rate, p99 < 100 ms, oversold 0",
        "goal_met": ratio >= 0.5 and storm["p99_ms"] < 100 and sell_out["oversold"] == 0,
    }


def table(results: dict[str, Any]) -> Table:
    table = Table(
        title=f"drop storm: {results.get('buyers')} buyers on one drop, PostgreSQL, "
        f"{results.get('serving', 'stallholder serve')}"
    )
    for column in ("run", "attempts", "errors", "per s", "p50 ms", "p99 ms", "notes"):
        table.add_column(column, justify="left" if column in ("run", "notes") else "right")
    if "skipped" in results:
        table.add_row("skipped", "", "", "", "", "", results["skipped"])
        return table
    storm, sell, raw = results["storm"], results["sell_out"], results["raw_conditional_update"]

    def row(name: str, run: dict[str, Any], notes: str) -> None:
        measured = ("attempts", "errors", "attempts_per_second", "p50_ms", "p99_ms")
        table.add_row(name, *(str(run[column]) for column in measured), notes)

    row(
        "storm (holds)",
        storm,
        f"{results['ratio_of_raw']:.1%} of raw; server CPU "
        f"{storm['server_cpu_ms_per_attempt']} ms/attempt",
    )
    row(
        f"sell-out ({sell['units']} units)",
        sell,
        f"orders {sell['orders']}, oversold {sell['oversold']}, clean {sell['is_clean']}",
    )
    after = results.get("after_sold_out")
    if after is not None:
        row(
            "after sold out (409s)",
            after,
            f"server CPU {after['server_cpu_ms_per_attempt']} ms/attempt",
        )
    floor = results.get("floor_hold")
    if floor is not None:
        row(
            "floor app (holds)",
            floor,
            f"{floor['ratio_of_raw']:.1%} of raw; server CPU "
            f"{floor['server_cpu_ms_per_attempt']} ms/attempt; Stallholder's storm "
            f"{results['ratio_of_floor']:.1%} of it",
        )
    row(
        f"raw UPDATE x{raw['connections']}",
        {
            "attempts": raw["updates"],
            "errors": 0,
            "attempts_per_second": raw["updates_per_second"],
            "p50_ms": raw["p50_ms"],
            "p99_ms": raw["p99_ms"],
        },
        "psycopg, autocommit, one row",
    )
    table.caption = f"goal met: {results['goal_met']} ({results['goal']})"
    return table
