"""The CLI against a real database file: migrate, demo (idempotent), ledger verify."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from stallholder.accounts.models import Creator
from stallholder.cli import app
from stallholder.kit import work
from stallholder.kit.clock import SystemClock
from stallholder.kit.db import Database
from stallholder.ledger.models import JournalLine


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


def _corrupt_one_line(url: str) -> None:
    async def corrupt() -> None:
        database = Database(url)
        try:
            async with database.unit_of_work() as session:
                line = (await session.execute(select(JournalLine).limit(1))).scalar_one()
                line.amount += 1
        finally:
            await database.dispose()

    asyncio.run(corrupt())


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
    second = runner.invoke(app, ["demo"])
    assert second.exit_code == 0, second.output
    assert _count_creators(url) == 3
    assert (tmp_path / "var" / "admin-key").read_text().strip() in second.output

    clean = runner.invoke(app, ["ledger", "verify"])
    assert clean.exit_code == 0, clean.output
    assert "Ledger balances" in clean.output

    _corrupt_one_line(url)
    broken = runner.invoke(app, ["ledger", "verify"])
    assert broken.exit_code == 1
    assert "unbalanced" in broken.output
    assert "balance mismatch" in broken.output


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
