"""``stallholder inventory import`` and ``template`` against SQLite and PostgreSQL: a file
with problems on several rows changes nothing and names each row and column; a good one
is applied with a progress bar; batches become incoming."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import TypeVar

import openpyxl
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from stallholder.catalog import service as catalog
from stallholder.cli import app
from stallholder.inventory import stock
from stallholder.inventory.models import IncomingBatch, StockMovement
from stallholder.kit.db import Database
from tests.conftest import T0
from tests.factories import create_creator, create_session

T = TypeVar("T")


def _run(url: str, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async def main() -> T:
        database = Database(url)
        try:
            async with database.unit_of_work() as session:
                return await work(session)
        finally:
            await database.dispose()

    return asyncio.run(main())


def _set_up(url: str) -> str:
    """A creator with ``MUG-W`` (10 on hand at "Studio", 3 held in a checkout) and
    ``MUG-B``; its id."""

    async def work(session: AsyncSession) -> str:
        creator = await create_creator(session, now=T0)
        product = await catalog.create_product(
            session,
            creator_id=creator.id,
            kind="physical",
            name="Mug",
            description="",
            status="published",
            variants=[catalog.VariantSpec(sku="MUG-W"), catalog.VariantSpec(sku="MUG-B")],
            now=T0,
        )
        studio = await stock.create_location(session, creator_id=creator.id, name="Studio", now=T0)
        await stock.adjust(
            session,
            creator_id=creator.id,
            sku="MUG-W",
            location_id=studio.id,
            delta=None,
            set_to=10,
            kind="adjusted",
            reason="first count",
            actor="test",
            now=T0,
        )
        price = await catalog.create_price(
            session,
            creator_id=creator.id,
            product_id=product.id,
            now=T0,
            spec=catalog.PriceSpec(currency="usd", unit_amount=4800),
        )
        await create_session(session, creator_id=creator.id, price_id=price.id, now=T0, quantity=3)
        return creator.id

    return _run(url, work)


def _stock(url: str, creator_id: str) -> dict[str, tuple[int, list[str]]]:
    """On hand and the movements' reasons of each SKU."""

    async def work(session: AsyncSession) -> dict[str, tuple[int, list[str]]]:
        result = {}
        for sku in ("MUG-W", "MUG-B"):
            levels = await stock.stock_for_sku(session, creator_id=creator_id, sku=sku)
            reasons = (
                await session.execute(
                    select(StockMovement.reason)
                    .where(StockMovement.sku == sku)
                    .order_by(StockMovement.created_at, StockMovement.id)
                )
            ).scalars()
            result[sku] = (levels.total.on_hand, list(reasons))
        return result

    return _run(url, work)


@pytest.fixture
def runner(any_database_url: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("STALLHOLDER_DATABASE_URL", any_database_url)
    monkeypatch.setenv("COLUMNS", "200")  # whole rows of the problem table
    return CliRunner()


def test_a_file_with_problems_on_several_rows_changes_nothing_and_names_each(
    runner: CliRunner, any_database_url: str, tmp_path: Path
) -> None:
    creator_id = _set_up(any_database_url)
    bad_cells = tmp_path / "bad-cells.csv"
    bad_cells.write_text("sku,location,on_hand\nMUG-W,Studio,lots\nMUG-B,,4\n")
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("sku,location,on_hand\nMUG-W,Studio,2\nNOPE,Studio,4\nMUG-B,Attic,1\n")

    cells = runner.invoke(app, ["inventory", "import", str(bad_cells), "--creator", creator_id])
    names = runner.invoke(app, ["inventory", "import", str(unknown), "--creator", creator_id])

    assert cells.exit_code == 1, cells.output
    assert "2 problem(s); nothing was imported" in cells.output
    assert "│ 2   │ on_hand" in cells.output
    assert "│ 3   │ location" in cells.output
    assert names.exit_code == 1, names.output
    assert "3 problem(s); nothing was imported" in names.output
    for row, column, message in (
        (2, "on_hand", "the count cannot be below"),
        (3, "sku", "none of your variants has the SKU 'NOPE'"),
        (4, "location", "you have no location named 'Attic'"),
    ):
        line = next(line for line in names.output.splitlines() if f"│ {row}   │" in line)
        assert column in line, names.output
        assert message in line, names.output
    assert _stock(any_database_url, creator_id) == {
        "MUG-W": (10, ["first count"]),
        "MUG-B": (0, []),
    }


def test_a_good_file_is_applied_and_batches_become_incoming(
    runner: CliRunner, any_database_url: str, tmp_path: Path
) -> None:
    creator_id = _set_up(any_database_url)
    counts = tmp_path / "counts.csv"
    counts.write_text("sku,location,on_hand,note\nMUG-W,Studio,12,\nMUG-B,Studio,4,new shelf\n")
    template = tmp_path / "batches.xlsx"
    made = runner.invoke(
        app,
        [
            "inventory",
            "template",
            "--kind",
            "batches",
            "--format",
            "xlsx",
            "--output",
            str(template),
        ],
    )
    assert made.exit_code == 0, made.output
    book = openpyxl.load_workbook(template)
    book.worksheets[0].append(["FIRING-12", "MUG-B", 20, date(2026, 12, 10), "Studio"])
    book.save(template)

    applied = runner.invoke(app, ["inventory", "import", str(counts), "--creator", creator_id])
    batches = runner.invoke(
        app,
        ["inventory", "import", str(template), "--creator", creator_id, "--kind", "batches"],
    )
    nobody = runner.invoke(app, ["inventory", "import", str(counts), "--creator", "cr_nobody"])

    assert applied.exit_code == 0, applied.output
    assert "Imported 2 count(s) from counts.csv: 2 changed, 0 unchanged" in applied.output
    assert _stock(any_database_url, creator_id) == {
        "MUG-W": (12, ["first count", "import counts.csv"]),
        "MUG-B": (4, ["import counts.csv: new shelf"]),
    }
    assert batches.exit_code == 0, batches.output
    assert "Imported 1 batch row(s) from batches.xlsx: 1 new, 0 updated" in batches.output

    async def incoming(session: AsyncSession) -> list[tuple[str, str, int, date, str]]:
        rows = await session.execute(select(IncomingBatch))
        return [(b.batch_ref, b.sku, b.quantity, b.expected_on, b.status) for b in rows.scalars()]

    assert _run(any_database_url, incoming) == [
        ("FIRING-12", "MUG-B", 20, date(2026, 12, 10), "incoming")
    ]
    assert nobody.exit_code == 1
    assert "no creator 'cr_nobody'" in nobody.output


def test_template_writes_csv_and_refuses_an_unknown_format(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    written = runner.invoke(app, ["inventory", "template", "--kind", "stock"])
    wrong = runner.invoke(app, ["inventory", "template", "--kind", "stock", "--format", "ods"])

    assert written.exit_code == 0, written.output
    assert (
        tmp_path / "stock_counts.csv"
    ).read_bytes() == b"\xef\xbb\xbfsku,location,on_hand,note\r\n"
    assert wrong.exit_code == 2
    assert "--format must be csv or xlsx" in wrong.output
