"""The stock-count and production-batch templates: columns, typed rows, checks.

This is the parse-and-validate half of an inventory import; applying the rows (setting
on-hand counts, recording incoming batches) is the inventory service's, which checks
what only the database knows (that each SKU and location exists) and applies all rows or
none. Everything here is pure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any

from stallholder.spreadsheets.sheets import (
    CSV_MEDIA_TYPE,
    XLSX_MEDIA_TYPE,
    Column,
    FileFormat,
    SheetError,
    SheetResult,
    calendar_date,
    read_sheet,
    template_csv,
    template_xlsx,
    text,
    whole_number,
)

# The SKU rule of the catalog (``catalog.schemas.VariantIn``).
_SKU = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")
MAX_QUANTITY = 1_000_000


def _is_sku(value: str) -> bool:
    return bool(_SKU.match(value))


_sku = Column(
    "sku",
    text(max_length=64, pattern=_is_sku, rule="is not a SKU (letters, digits, '.', '_', '-')"),
    help="The variant's SKU, as in the catalog.",
    example="KC-MOON-MUG",
)
_location = Column(
    "location",
    text(max_length=200),
    help="The location's name (e.g. Studio) or id (loc_…).",
    example="Studio",
)


class TemplateKind(StrEnum):
    STOCK_COUNTS = "stock_counts"
    PRODUCTION_BATCHES = "production_batches"


@dataclass(frozen=True, slots=True)
class StockCount:
    """What was counted on the shelf: ``on_hand`` becomes the SKU's on-hand at the location."""

    sku: str
    location: str
    on_hand: int
    note: str | None = None


@dataclass(frozen=True, slots=True)
class ProductionBatch:
    """Pieces being made: ``quantity`` of ``sku`` expected at ``location`` on
    ``expected_ready_date`` (shown as incoming until then)."""

    batch_id: str
    sku: str
    quantity: int
    expected_ready_date: date
    location: str


STOCK_COUNT_COLUMNS = (
    _sku,
    _location,
    Column(
        "on_hand",
        whole_number(minimum=0, maximum=MAX_QUANTITY),
        help="How many you counted (a whole number, 0 or more).",
        example="18",
        excel_check="whole",
    ),
    Column(
        "note",
        text(max_length=500),
        required=False,
        help="Optional: why the count differs (kept with the adjustment).",
        example="2 chipped, set aside",
    ),
)

PRODUCTION_BATCH_COLUMNS = (
    Column(
        "batch_id",
        text(max_length=64),
        help="Your name for the batch (a kiln firing, a print run).",
        example="FIRING-2026-12",
    ),
    _sku,
    Column(
        "quantity",
        whole_number(minimum=1, maximum=MAX_QUANTITY),
        help="How many pieces the batch will make (1 or more).",
        example="20",
        excel_check="whole",
    ),
    Column(
        "expected_ready_date",
        calendar_date,
        help="When the pieces are expected to be ready, as YYYY-MM-DD (or a date cell).",
        example="2026-12-10",
        excel_check="date",
    ),
    _location,
)


def _build_count(values: dict[str, Any]) -> StockCount:
    return StockCount(
        sku=values["sku"],
        location=values["location"],
        on_hand=values["on_hand"],
        note=values["note"],
    )


def _build_batch(values: dict[str, Any]) -> ProductionBatch:
    return ProductionBatch(
        batch_id=values["batch_id"],
        sku=values["sku"],
        quantity=values["quantity"],
        expected_ready_date=values["expected_ready_date"],
        location=values["location"],
    )


def _duplicates(
    rows: Sequence[tuple[int, Any]], key: Any, *, column: str, what: str
) -> list[SheetError]:
    first: dict[Any, int] = {}
    errors = []
    for number, row in rows:
        value = key(row)
        if value in first:
            errors.append(SheetError(number, column, f"{what} is also on row {first[value]}"))
        else:
            first[value] = number
    return errors


def _check_counts(rows: Sequence[tuple[int, StockCount]]) -> list[SheetError]:
    # A SKU is counted once per location; SKUs match case-insensitively, as people type.
    return _duplicates(
        rows,
        lambda r: (r.sku.lower(), r.location.lower()),
        column="sku",
        what="this SKU at this location",
    )


def _check_batches(rows: Sequence[tuple[int, ProductionBatch]]) -> list[SheetError]:
    return _duplicates(
        rows,
        lambda r: (r.batch_id.lower(), r.sku.lower()),
        column="sku",
        what="this SKU in this batch",
    )


def parse_stock_counts(data: bytes, *, file_format: FileFormat) -> SheetResult[StockCount]:
    """The counts in a filled-in stock-count template, or every problem (no rows)."""
    return read_sheet(
        data,
        file_format=file_format,
        columns=STOCK_COUNT_COLUMNS,
        build=_build_count,
        check_rows=_check_counts,
    )


def parse_production_batches(
    data: bytes, *, file_format: FileFormat
) -> SheetResult[ProductionBatch]:
    """The batches in a filled-in production-batch template, or every problem (no rows)."""
    return read_sheet(
        data,
        file_format=file_format,
        columns=PRODUCTION_BATCH_COLUMNS,
        build=_build_batch,
        check_rows=_check_batches,
    )


@dataclass(frozen=True, slots=True)
class TemplateFile:
    filename: str
    media_type: str
    content: bytes


def template_file(kind: TemplateKind, file_format: FileFormat) -> TemplateFile:
    """The empty template to download, as CSV or XLSX."""
    columns = STOCK_COUNT_COLUMNS if kind is TemplateKind.STOCK_COUNTS else PRODUCTION_BATCH_COLUMNS
    filename = f"{kind.value}.{file_format}"
    if file_format == "csv":
        return TemplateFile(filename, CSV_MEDIA_TYPE, template_csv(columns))
    title = "Stock counts" if kind is TemplateKind.STOCK_COUNTS else "Production batches"
    return TemplateFile(filename, XLSX_MEDIA_TYPE, template_xlsx(columns, title=title))
