"""Webhook throughput: how fast the worker fans events out and delivers them, signed, to
a fast local receiver that answers at once (``bench/receiver.py``), on SQLite and
PostgreSQL.

N events are written to the outbox up front; then one worker (the same ``Worker`` that
``stallholder worker`` runs, with real HTTP to a uvicorn receiver) runs passes until
every delivery has succeeded. Deliveries/s is N over that time."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench import harness
from bench.checkout import _create_postgres_database, _drop_postgres_database
from stallholder.accounts import service as accounts
from stallholder.events import service as events
from stallholder.events import webhooks
from stallholder.events.models import WebhookDelivery
from stallholder.jobs.worker import Worker
from stallholder.kit.clock import SystemClock
from stallholder.kit.db import Database
from stallholder.migrations import upgrade
from stallholder.settings import Settings

NAME = "webhooks"


async def _measure(url: str, receiver: str, workdir: Path, *, events_count: int) -> dict[str, Any]:
    upgrade(url)
    database = Database(url)
    clock = SystemClock()
    try:
        async with database.unit_of_work() as session:
            creator, _, _ = await accounts.create_creator(
                session,
                display_name="Bench Hooks",
                email="hooks@example.com",
                slug=None,
                platform_fee_bps=None,
                platform_fee_fixed=None,
                now=clock.now(),
            )
            await webhooks.create_endpoint(
                session,
                creator_id=creator.id,
                url=receiver,
                event_types=["*"],
                description=None,
                allow_private=True,
                now=clock.now(),
            )
            for n in range(events_count):
                await events.emit(
                    session,
                    creator_id=creator.id,
                    type="checkout.session.completed",
                    data={
                        "object": "checkout.session",
                        "id": f"cs_bench_{n}",
                        "amount_total": 1500,
                    },
                    now=clock.now(),
                )
        settings = Settings(
            data_dir=workdir / "var", database_url=url, allow_private_webhook_targets=True
        )
        worker = Worker(database, clock, settings=settings)
        started, cpu_started = time.monotonic(), time.process_time()
        passes = 0
        while True:
            passes += 1
            await worker.run_once()
            async with database.unit_of_work() as session:
                done = (
                    await session.execute(
                        select(func.count())
                        .select_from(WebhookDelivery)
                        .where(WebhookDelivery.status == "succeeded")
                    )
                ).scalar_one()
            if done >= events_count or passes > 10 * events_count:
                break
        elapsed = time.monotonic() - started
        cpu = time.process_time() - cpu_started
    finally:
        await database.dispose()
    return {
        "events": events_count,
        "delivered": done,
        "seconds": round(elapsed, 2),
        "per_second": round(done / elapsed, 1),
        # The worker's own CPU (this process: fan-out, sending, recording) per delivery,
        # and what one busy core would deliver at that cost: the machine's two cores are
        # shared with the receiver and the database.
        "worker_cpu_ms_per_delivery": round(cpu / max(done, 1) * 1000, 3),
        "per_worker_cpu_second": round(done / cpu, 1),
        "worker_passes": passes,
    }


def run(*, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
    """``duration`` scales the number of events (50 per second asked for)."""
    events_count = max(100, int(duration * 50))
    results: dict[str, Any] = {"concurrency": 1, "iteration": "event -> signed POST, 2xx"}
    with tempfile.TemporaryDirectory(prefix="stallholder-bench-") as tmp:
        workdir = Path(tmp)
        port = harness.free_port()
        command = [str(harness.BIN / "python"), "-m", "bench.receiver", str(port)]
        with harness.server(command, env={}, port=port, log=workdir / "receiver.log") as base:
            receiver = f"{base}/hooks"
            results["sqlite"] = asyncio.run(
                _measure(
                    f"sqlite:///{workdir / 'hooks.db'}",
                    receiver,
                    workdir,
                    events_count=events_count,
                )
            )
            created = _create_postgres_database()
            if created is not None:
                url, name = created
                try:
                    results["postgresql"] = asyncio.run(
                        _measure(url, receiver, workdir, events_count=events_count)
                    )
                finally:
                    _drop_postgres_database(name)
    return results
