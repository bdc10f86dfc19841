"""Kill the worker while deliveries are in flight, start another: every event still
arrives, verified by the ``standardwebhooks`` library against the real clock."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from stallholder.events.models import WebhookDelivery
from stallholder.kit.db import Database
from tests.conftest import ADMIN_KEY, Api, bearer
from tests.forked import ForkedCommand
from tests.webhook_receiver import Receiver, serve

pytestmark = pytest.mark.anyio


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


@contextmanager
def worker_process(database_url: str, data_dir: Path, log: Path) -> Iterator[ForkedCommand]:
    """``stallholder worker``, forked from a process that imported Stallholder once
    (``tests/forked.py``): a start costs no interpreter start-up on a busy machine."""
    env = {
        **os.environ,
        "STALLHOLDER_DATABASE_URL": database_url,
        "STALLHOLDER_DATA_DIR": str(data_dir),
        "STALLHOLDER_ADMIN_KEY": ADMIN_KEY,
        "STALLHOLDER_ALLOW_PRIVATE_WEBHOOK_TARGETS": "true",
        "STALLHOLDER_WEBHOOK_LEASE_SECONDS": "3",
        "STALLHOLDER_WORKER_POLL_SECONDS": "0.1",
    }
    command = ForkedCommand(["worker"], env=env, log=log)
    command.start()
    try:
        yield command
    finally:
        if command.running():
            command.kill()


async def _wait_for(condition: Callable[[], Awaitable[bool]], *, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting {seconds:g} s for {what}")
        await asyncio.sleep(0.1)


async def test_killing_the_worker_mid_delivery_loses_nothing(
    api: Api, database: Database, database_url: str, tmp_path: Path
) -> None:
    creator, price = await api.shop()
    sk = creator["secret_key"]
    log = tmp_path / "worker.log"
    with serve(Receiver(secrets=[], frozen_time=False, delay_seconds=1.5)) as receiver:
        created = await api.http.post(
            "/v1/webhook_endpoints",
            headers=bearer(sk),
            json={"url": receiver.url, "events": ["*"]},
        )
        receiver.secrets.append(created.json()["secret"])
        for _ in range(4):
            session = await api.session(sk, price=price["id"])
            assert (await api.confirm(sk, session["id"])).status_code == 200
        listed = await api.http.get("/v1/events?limit=100", headers=bearer(sk))
        events = {e["id"] for e in listed.json()["data"]}
        assert len(events) == 8

        async def some_in_flight() -> bool:
            return receiver.started >= 1

        with worker_process(database_url, tmp_path / "var", log) as first:
            await _wait_for(some_in_flight, seconds=90, what="a delivery in flight")
            first.kill()
        in_flight_when_killed = receiver.started
        async with database.unit_of_work() as db:
            statuses = (await db.execute(select(WebhookDelivery.status))).scalars().all()
        assert "pending" in statuses, "the kill came too late to test anything"

        async def all_delivered() -> bool:
            async with database.unit_of_work() as db:
                rows = (await db.execute(select(WebhookDelivery.status))).scalars().all()
            return len(rows) == 8 and set(rows) == {"succeeded"}

        with worker_process(database_url, tmp_path / "var", log) as second:
            await _wait_for(all_delivered, seconds=90, what="every delivery to succeed")
            second.stop(signal.SIGTERM, timeout=10)

    assert in_flight_when_killed >= 1
    assert receiver.verified_ids() == events
    assert all(r.verified_with == receiver.secrets for r in receiver.received)
    # Deliveries cut off by the kill were sent again under the same webhook-id.
    assert set(receiver.ids()) == events
    assert len(receiver.ids()) >= len(events)
