"""Sign-in links for the creator audience (the dashboard's), and reading a link the
embedded default wrote to a file: services and the CLI, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from stallholder.accounts import service as accounts
from stallholder.accounts import sign_in
from stallholder.cli import app
from stallholder.jobs.worker import Worker
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.notifications import service as notifications
from stallholder.notifications.models import Email
from stallholder.settings import Settings
from tests.conftest import T0

pytestmark = pytest.mark.anyio


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


async def test_a_creator_link_signs_in_that_creator_only(database: Database) -> None:
    async with database.unit_of_work() as session:
        first, _, _ = await accounts.create_creator(
            session,
            display_name="Kiln & Clay",
            email="Studio@Example.com",
            slug=None,
            platform_fee_bps=None,
            platform_fee_fixed=None,
            now=T0,
        )
        second, _, _ = await accounts.create_creator(
            session,
            display_name="Second Kiln",
            email="studio@example.com",
            slug=None,
            platform_fee_bps=None,
            platform_fee_fixed=None,
            now=T0,
        )
        await accounts.create_creator(
            session,
            display_name="Other",
            email="other@example.com",
            slug=None,
            platform_fee_bps=None,
            platform_fee_fixed=None,
            now=T0,
        )
        links = await sign_in.request_link(
            session, audience="creator", email="STUDIO@example.com", ip_address="10.0.0.1", now=T0
        )
        # One person, two shops: a link to each, to the address each shop was made with.
        assert [(link.subject_id, link.creator_id, link.to) for link in links] == sorted(
            [
                (first.id, first.id, "Studio@Example.com"),
                (second.id, second.id, "studio@example.com"),
            ]
        )
        for link in links:
            await notifications.queue_sign_in_link(
                session,
                audience="creator",
                to=link.to,
                url=f"http://testserver/dashboard/sign-in/{link.token}",
                expires_in=sign_in.LINK_TTL,
                creator_id=link.creator_id,
                now=T0,
            )
    async with database.unit_of_work() as session:
        with pytest.raises(sign_in.SignInLinkInvalid, match="not a link we sent"):
            await sign_in.redeem(session, audience="buyer", token=links[0].token, now=T0)
    async with database.unit_of_work() as session:
        assert (
            await sign_in.redeem(session, audience="creator", token=links[0].token, now=T0)
            == links[0].subject_id
        )
    async with database.unit_of_work() as session:
        with pytest.raises(sign_in.SignInLinkInvalid, match="used already"):
            await sign_in.redeem(session, audience="creator", token=links[0].token, now=T0)
        emails = (
            await session.execute(select(Email.creator_id, Email.subject).order_by(Email.subject))
        ).all()
    assert emails == [
        (first.id, "Sign in to the Kiln & Clay dashboard"),
        (second.id, "Sign in to the Second Kiln dashboard"),
    ]


async def test_the_cli_prints_the_newest_link_written_to_a_file(
    settings: Settings, database: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without an SMTP server emails are files; ``stallholder mail latest`` shows the link."""
    async with database.unit_of_work() as session:
        creator, _, _ = await accounts.create_creator(
            session,
            display_name="Kiln & Clay",
            email="studio@example.com",
            slug=None,
            platform_fee_bps=None,
            platform_fee_fixed=None,
            now=T0,
        )
        await accounts.create_customer(
            session,
            creator_id=creator.id,
            email="reader@example.com",
            name=None,
            time_zone="UTC",
            now=T0,
        )
        [link] = await sign_in.request_link(
            session, audience="buyer", email="reader@example.com", ip_address=None, now=T0
        )
        url = f"http://127.0.0.1:8000/portal/sign-in/{link.token}"
        await notifications.queue_sign_in_link(
            session,
            audience="buyer",
            to=link.to,
            url=url,
            expires_in=sign_in.LINK_TTL,
            creator_id=None,
            now=T0,
        )
    await Worker(database, FrozenClock(T0), settings=settings).run_once()
    monkeypatch.setenv("STALLHOLDER_DATA_DIR", str(settings.data_dir))
    printed = CliRunner().invoke(app, ["mail", "latest", "--to", "Reader@example.com"])
    assert printed.exit_code == 0, printed.output
    assert "Subject: Your Stallholder sign-in link" in printed.output
    assert f"\n{url}\n" in printed.output
    missing = CliRunner().invoke(app, ["mail", "latest", "--to", "nobody@example.com"])
    assert missing.exit_code == 1
    assert "no email to nobody@example.com" in missing.output


async def test_two_clicks_racing_on_one_link_sign_in_once(database: Database) -> None:
    async with database.unit_of_work() as session:
        creator, _, _ = await accounts.create_creator(
            session,
            display_name="Kiln & Clay",
            email="studio@example.com",
            slug=None,
            platform_fee_bps=None,
            platform_fee_fixed=None,
            now=T0,
        )
        await accounts.create_customer(
            session,
            creator_id=creator.id,
            email="ana@example.com",
            name=None,
            time_zone="UTC",
            now=T0,
        )
        [link] = await sign_in.request_link(
            session, audience="buyer", email="ana@example.com", ip_address=None, now=T0
        )

    async def click() -> str | None:
        try:
            async with database.unit_of_work() as session:
                return await sign_in.redeem(session, audience="buyer", token=link.token, now=T0)
        except sign_in.SignInLinkInvalid:
            return None

    outcomes = await asyncio.gather(*(click() for _ in range(5)))
    assert [outcome for outcome in outcomes if outcome is not None] == [link.subject_id]
    assert outcomes.count(None) == 4
