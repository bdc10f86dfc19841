"""The CLI against a real database file: migrate, demo (idempotent), ledger verify."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import httpx
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from stallholder.accounts.models import Buyer, Creator
from stallholder.billing.models import Invoice, Subscription, SubscriptionItem
from stallholder.cli import app, run_worker
from stallholder.inventory.models import Drop, DropItem, StockLevel, WaitlistEntry
from stallholder.kit import work
from stallholder.kit.clock import SystemClock
from stallholder.kit.db import Database
from stallholder.ledger.models import JournalLine
from stallholder.wallets.models import Wallet


def _wallet_balances(url: str) -> list[tuple[str, str, int]]:
    async def read() -> list[tuple[str, str, int]]:
        database = Database(url)
        try:
            async with database.unit_of_work() as session:
                rows = await session.execute(
                    select(Buyer.email_key, Wallet.currency, Wallet.balance).join(
                        Buyer, Buyer.id == Wallet.buyer_id
                    )
                )
                return [(key, currency, balance) for key, currency, balance in rows]
        finally:
            await database.dispose()

    return asyncio.run(read())


def _count_creators(url: str) -> int:
    async def count() -> int:
        database = Database(url)
        try:
            async with database.unit_of_work() as session:
                return int(
                    (await session.execute(select(func.count()).select_from(Creator))).scalar_one()
                )
        finally:
            await database.dispose()

    return asyncio.run(count())


def _subscriptions(url: str) -> list[tuple[str, str, int]]:
    """(plan, status, first invoice's amount paid) of every subscription."""

    async def read() -> list[tuple[str, str, int]]:
        database = Database(url)
        try:
            async with database.unit_of_work() as session:
                rows = await session.execute(
                    select(SubscriptionItem.description, Subscription.status, Invoice.amount_paid)
                    .join(Subscription, Subscription.id == SubscriptionItem.subscription_id)
                    .join(Invoice, Invoice.subscription_id == Subscription.id)
                    .order_by(SubscriptionItem.description)
                )
                return [(str(a), str(b), int(c)) for a, b, c in rows.all()]
        finally:
            await database.dispose()

    return asyncio.run(read())


def _corrupt_one_line(url: str) -> None:
    async def corrupt() -> None:
        database = Database(url)
        try:
            async with database.unit_of_work() as session:
                line = (await session.execute(select(JournalLine).limit(1))).scalar_one()
                line.amount += 1
                wallet = (await session.execute(select(Wallet))).scalar_one()
                wallet.balance += 1
        finally:
            await database.dispose()

    asyncio.run(corrupt())


def _mug_stock(url: str) -> tuple[int, int, int]:
    async def read() -> tuple[int, int, int]:
        database = Database(url)
        try:
            async with database.unit_of_work() as session:
                level = (
                    await session.execute(select(StockLevel).where(StockLevel.sku == "KC-MOON-MUG"))
                ).scalar_one()
                return (level.on_hand, level.reserved, level.allocated)
        finally:
            await database.dispose()

    return asyncio.run(read())


def _waitlist(url: str) -> list[tuple[str, str]]:
    async def read() -> list[tuple[str, str]]:
        database = Database(url)
        try:
            async with database.unit_of_work() as session:
                rows = await session.execute(
                    select(WaitlistEntry.email, WaitlistEntry.status).order_by(WaitlistEntry.id)
                )
                return [(row.email, row.status) for row in rows]
        finally:
            await database.dispose()

    return asyncio.run(read())


def _mug_drop(url: str) -> tuple[str, str, int, int, int, int | None]:
    async def read() -> tuple[str, str, int, int, int, int | None]:
        database = Database(url)
        try:
            async with database.unit_of_work() as session:
                drop = (
                    await session.execute(select(Drop).where(Drop.name == "Winter mug drop"))
                ).scalar_one()
                item = (
                    await session.execute(select(DropItem).where(DropItem.drop_id == drop.id))
                ).scalar_one()
                return (
                    drop.name,
                    drop.mode,
                    item.quantity,
                    item.held,
                    item.sold,
                    drop.per_customer_limit,
                )
        finally:
            await database.dispose()

    return asyncio.run(read())


def test_migrate_demo_twice_and_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("STALLHOLDER_DATABASE_URL", url)
    monkeypatch.setenv("STALLHOLDER_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("STALLHOLDER_ADMIN_KEY", raising=False)
    runner = CliRunner()

    assert runner.invoke(app, ["migrate"]).exit_code == 0
    first = runner.invoke(app, ["demo"])
    assert first.exit_code == 0, first.output
    assert "Kiln & Clay" in first.output
    assert re.search(
        r"Embed demo: +http://\S+/demo/embed\?key=pk_\S+&price=price_\w+", first.output
    )
    # How to reach the dashboard and sign in as a demo creator without a mail server.
    assert "/dashboard" in first.output
    assert "hello@paperlantern.example, studio@kilnandclay.example, fox@inkfox.example" in (
        first.output
    )
    assert "stallholder mail latest --to hello@paperlantern.example" in first.output
    second = runner.invoke(app, ["demo"])
    assert second.exit_code == 0, second.output
    assert _count_creators(url) == 3
    # The zine's first reader: a buyer with a saved card and $5 in a wallet, from which
    # Ink Fox's $4 sketchbook club took its first month (renewals use the wallet first).
    assert _wallet_balances(url) == [("reader@example.com", "usd", 100)]
    # … subscribed with two creators, the portal's demo buyer.
    assert _subscriptions(url) == [
        ("$3 / month", "active", 300),
        ("$4 / month", "active", 400),
    ]
    assert "Buyer portal:  http://127.0.0.1:8000/portal  (sign in as reader@example.com" in (
        first.output
    )
    assert "stallholder mail latest --to reader@example.com" in first.output
    assert (tmp_path / "var" / "admin-key").read_text().strip() in second.output
    # The winter mug: 20 pieces, one sold (allocated), one held in an open checkout.
    assert _mug_stock(url) == (20, 1, 1)
    # … sold through a first-come drop of 20, open from seeding, the open checkout in it.
    assert _mug_drop(url) == ("Winter mug drop", "first_come", 20, 1, 1, 2)
    # The one studio second is held in an open checkout; two buyers wait for it, in order.
    assert _waitlist(url) == [
        ("first.in.line@example.com", "waiting"),
        ("next.in.line@example.com", "waiting"),
    ]

    clean = runner.invoke(app, ["ledger", "verify"])
    assert clean.exit_code == 0, clean.output
    assert "Ledger balances" in clean.output

    _corrupt_one_line(url)
    broken = runner.invoke(app, ["ledger", "verify"])
    assert broken.exit_code == 1
    assert "unbalanced" in broken.output
    assert "balance mismatch" in broken.output
    assert "wallet mismatch" in broken.output


def test_creators_create_prints_keys_and_refuses_a_taken_slug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STALLHOLDER_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("STALLHOLDER_DATA_DIR", str(tmp_path / "var"))
    runner = CliRunner()
    assert runner.invoke(app, ["migrate"]).exit_code == 0
    created = runner.invoke(
        app, ["creators", "create", "--name", "Moth Press", "--email", "m@example.com"]
    )
    assert created.exit_code == 0, created.output
    assert "(moth-press)" in created.output
    assert "secret key:      sk_" in created.output
    taken = runner.invoke(
        app,
        [
            "creators",
            "create",
            "--name",
            "Other",
            "--email",
            "o@example.com",
            "--slug",
            "moth-press",
        ],
    )
    assert taken.exit_code == 1
    assert "the slug 'moth-press' is taken" in taken.output


@pytest.mark.parametrize("email", ["nope", "a@b@example.com", "a\tb@example.com", "a\r\n@x.io"])
def test_creators_create_explains_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, email: str
) -> None:
    monkeypatch.setenv("STALLHOLDER_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    result = CliRunner().invoke(app, ["creators", "create", "--name", "X", "--email", email])
    assert result.exit_code == 2
    assert "email: Value error, not an email address" in result.output


def test_the_public_base_url_follows_the_served_port_unless_it_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stallholder.cli import _settings

    monkeypatch.delenv("STALLHOLDER_BASE_URL", raising=False)
    monkeypatch.setenv("PORT", "8123")
    assert _settings().base_url == "http://127.0.0.1:8123"
    assert _settings(host="0.0.0.0", port=9000).base_url == "http://127.0.0.1:9000"  # noqa: S104
    assert _settings(host="shop.local", port=80).base_url == "http://shop.local:80"

    monkeypatch.setenv("STALLHOLDER_BASE_URL", "https://shop.example")
    assert _settings(port=9000).base_url == "https://shop.example"


def _work_rows(url: str) -> dict[str, str]:
    """Four work items (due, not yet due, running, dead): kind → id."""

    async def make() -> dict[str, str]:
        database = Database(url)
        now = SystemClock().now()
        made: dict[str, str] = {}
        try:
            async with database.unit_of_work() as session:
                for kind, due_at in (
                    ("test.due", now - timedelta(minutes=1)),
                    ("test.later", now + timedelta(hours=1)),
                    ("test.running", now - timedelta(minutes=1)),
                    ("test.dead", now - timedelta(minutes=1)),
                ):
                    made[kind] = (
                        await work.enqueue(session, kind=kind, payload={}, due_at=due_at, now=now)
                        or ""
                    )
            async with database.unit_of_work() as session:
                for kind in ("test.running", "test.dead"):
                    await work.claim(session, kind=work.Kind(name=kind, handler=_noop), now=now)
                dead = await session.get(work.WorkItem, made["test.dead"])
                assert dead is not None
                dead.state, dead.last_error = "dead", "SMTPRecipientsRefused: 550 no such user"
        finally:
            await database.dispose()
        return made

    return asyncio.run(make())


async def _noop(_context: work.Context[object], _item: work.Claimed) -> None:
    return None


def _state_of(url: str, work_id: str) -> tuple[str, int]:
    async def read() -> tuple[str, int]:
        database = Database(url)
        try:
            async with database.unit_of_work() as session:
                item = await session.get(work.WorkItem, work_id)
                assert item is not None
                return item.state, item.attempts
        finally:
            await database.dispose()

    return asyncio.run(read())


def test_jobs_lists_due_running_and_dead_work_and_retries_a_dead_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("STALLHOLDER_DATABASE_URL", url)
    monkeypatch.setenv("STALLHOLDER_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("COLUMNS", "200")  # a terminal wide enough for whole rows
    runner = CliRunner()
    assert runner.invoke(app, ["migrate"]).exit_code == 0
    made = _work_rows(url)

    listed = runner.invoke(app, ["jobs"])
    assert listed.exit_code == 0, listed.output
    assert "Work (3)" in listed.output
    for kind in ("test.due", "test.running", "test.dead"):
        assert kind in listed.output
    assert "test.later" not in listed.output  # pending but not due yet

    dead = runner.invoke(app, ["jobs", "--state", "dead"])
    assert "Work (1)" in dead.output
    assert "test.dead" in dead.output
    assert "550 no such user" in dead.output
    by_kind = runner.invoke(app, ["jobs", "--kind", "test.running"])
    assert "Work (1)" in by_kind.output
    assert "test.running" in by_kind.output
    wrong = runner.invoke(app, ["jobs", "--state", "done"])
    assert wrong.exit_code == 2
    assert "--state must be one of due, running, dead, not 'done'" in wrong.output

    retried = runner.invoke(app, ["jobs", "retry", made["test.dead"]])
    assert retried.exit_code == 0, retried.output
    assert f"{made['test.dead']} (test.dead) is due again" in retried.output
    assert _state_of(url, made["test.dead"]) == ("pending", 0)
    not_dead = runner.invoke(app, ["jobs", "retry", made["test.due"]])
    assert not_dead.exit_code == 1
    assert "is pending, not dead; only dead work can be retried" in not_dead.output
    missing = runner.invoke(app, ["jobs", "retry", "wrk_missing"])
    assert missing.exit_code == 1
    assert "no work item 'wrk_missing'" in missing.output


class _FakeProcess:
    """Stands in for the worker process: records that it ran and was stopped."""

    started: ClassVar[list[_FakeProcess]] = []

    def __init__(self, *, target: Callable[[], None], name: str) -> None:
        self.target, self.name = target, name
        self.pid: int | None = None
        self.is_running = False
        self.joined = False

    def start(self) -> None:
        self.is_running = True
        _FakeProcess.started.append(self)

    def is_alive(self) -> bool:
        return self.is_running

    def terminate(self) -> None:
        self.is_running = False

    def join(self, timeout: float | None = None) -> None:
        self.joined = True


@pytest.fixture
def fake_processes(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """``uvicorn.run`` and the worker process replaced: the calls, with the environment the
    server processes would have started with."""
    import multiprocessing

    import uvicorn

    calls: list[dict[str, Any]] = []

    def run(app: object, **options: Any) -> None:
        environment = {
            name: os.environ.get(name)
            for name in ("STALLHOLDER_EMBEDDED_WORKER", "STALLHOLDER_BASE_URL")
        }
        calls.append({"app": app, **options, "environment": environment})

    _FakeProcess.started = []
    monkeypatch.setattr(uvicorn, "run", run)
    monkeypatch.setattr(
        multiprocessing, "get_context", lambda method: SimpleNamespace(Process=_FakeProcess)
    )
    monkeypatch.delenv("STALLHOLDER_EMBEDDED_WORKER", raising=False)
    monkeypatch.delenv("STALLHOLDER_BASE_URL", raising=False)
    return calls


def test_serve_workers_refuses_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_processes: list[dict[str, Any]]
) -> None:
    monkeypatch.setenv("STALLHOLDER_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    result = CliRunner().invoke(app, ["serve", "--workers", "2"])
    assert result.exit_code == 2
    assert "--workers above 1 needs PostgreSQL" in " ".join(result.output.split())
    assert fake_processes == []
    assert _FakeProcess.started == []


def test_serve_workers_on_postgres_runs_server_processes_and_one_worker_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_processes: list[dict[str, Any]]
) -> None:
    # Nothing connects before uvicorn starts the processes, so no server is needed here.
    monkeypatch.setenv("STALLHOLDER_DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none")
    monkeypatch.setenv("STALLHOLDER_ADMIN_KEY", "admin_cli_key")
    result = CliRunner().invoke(app, ["serve", "--workers", "3", "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert fake_processes == [
        {
            "app": "stallholder.app:create_app",
            "factory": True,
            "workers": 3,
            "host": "127.0.0.1",
            "port": 8123,
            "log_level": "info",
            "access_log": False,
            "timeout_worker_healthcheck": 60,
            "environment": {
                "STALLHOLDER_EMBEDDED_WORKER": "0",
                "STALLHOLDER_BASE_URL": "http://127.0.0.1:8123",
            },
        }
    ]
    [worker] = _FakeProcess.started
    assert worker.target is run_worker
    assert worker.is_running is False
    assert worker.joined is True
    # The environment is the caller's again afterwards.
    assert "STALLHOLDER_EMBEDDED_WORKER" not in os.environ
    assert "STALLHOLDER_BASE_URL" not in os.environ


def test_serve_workers_without_worker_starts_no_worker_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_processes: list[dict[str, Any]]
) -> None:
    monkeypatch.setenv("STALLHOLDER_DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none")
    monkeypatch.setenv("STALLHOLDER_ADMIN_KEY", "admin_cli_key")
    result = CliRunner().invoke(app, ["serve", "--workers", "2", "--no-worker"])
    assert result.exit_code == 0, result.output
    assert [call["workers"] for call in fake_processes] == [2]
    assert _FakeProcess.started == []


def test_serve_workers_generates_the_admin_key_once_before_the_processes_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_processes: list[dict[str, Any]]
) -> None:
    monkeypatch.setenv("STALLHOLDER_DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none")
    monkeypatch.delenv("STALLHOLDER_ADMIN_KEY", raising=False)
    result = CliRunner().invoke(app, ["serve", "--workers", "2", "--no-worker"])
    assert result.exit_code == 0, result.output
    key = (tmp_path / "var" / "admin-key").read_text().strip()
    assert key.startswith("admin_")
    assert key in " ".join(result.output.split())


@pytest.mark.postgres
def test_serve_workers_sells_over_http_and_the_worker_process_sends_the_receipt(
    postgres_url: str, tmp_path: Path
) -> None:
    """Two real server processes and a worker process beside them: a sale over HTTP, and
    its receipt written by the worker process (the server processes embed none)."""
    port = _free_port()
    data_dir = tmp_path / "served"
    env = {
        **os.environ,
        "STALLHOLDER_DATABASE_URL": postgres_url,
        "STALLHOLDER_DATA_DIR": str(data_dir),
        "STALLHOLDER_ADMIN_KEY": "admin_cli_key",
        "STALLHOLDER_WORKER_POLL_SECONDS": "0.1",
    }
    base = f"http://127.0.0.1:{port}"
    with (tmp_path / "serve.log").open("wb") as output:
        process = subprocess.Popen(  # noqa: S603 - our own command
            [str(STALLHOLDER), "serve", "--workers", "2", "--port", str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_until(lambda: _answers(f"{base}/healthz"), what="the server to answer")
            with httpx.Client(base_url=base, timeout=30) as http:
                creator = http.post(
                    "/v1/creators",
                    headers={"Authorization": "Bearer admin_cli_key"},
                    json={"display_name": "Twin Press", "email": "twin@example.com"},
                )
                auth = {"Authorization": f"Bearer {creator.json()['secret_key']}"}
                product = http.post(
                    "/v1/products",
                    headers=auth,
                    json={"kind": "digital", "name": "Zine", "status": "published"},
                )
                price = http.post(
                    "/v1/prices",
                    headers=auth,
                    json={"product": product.json()["id"], "unit_amount": 700, "currency": "usd"},
                )
                session = http.post(
                    "/v1/checkout/sessions",
                    headers=auth,
                    json={
                        "line_items": [{"price": price.json()["id"], "quantity": 1}],
                        "customer_email": "reader@example.com",
                    },
                )
                confirmed = http.post(
                    f"/v1/checkout/sessions/{session.json()['id']}/confirm",
                    headers=auth,
                    json={"payment_method": "tok_visa"},
                )
            assert confirmed.status_code == 200, confirmed.text
            assert confirmed.json()["status"] == "complete"
            mail = data_dir / "mail"
            _wait_until(lambda: any(mail.glob("*.eml")), what="the receipt email")
            [receipt] = mail.glob("*.eml")
            assert "reader@example.com" in receipt.read_text()
        finally:
            process.send_signal(signal.SIGINT)
            try:
                assert process.wait(timeout=30) == 0
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()


STALLHOLDER = Path(sys.executable).parent / "stallholder"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_until(condition: Callable[[], bool], *, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting {seconds:g} s for {what}")
        time.sleep(0.1)
