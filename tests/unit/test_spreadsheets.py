"""Stock-count and production-batch sheets, CSV and XLSX: typed rows, or every problem."""

from __future__ import annotations

import io
from datetime import date, datetime
from typing import Any

import openpyxl
import pytest

from stallholder.spreadsheets.inventory import (
    ProductionBatch,
    StockCount,
    TemplateKind,
    parse_production_batches,
    parse_stock_counts,
    template_file,
)
from stallholder.spreadsheets.sheets import (
    InvalidSpreadsheet,
    SheetError,
    detect_format,
)


def xlsx(rows: list[list[Any]]) -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    for row in rows:
        sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def test_a_csv_of_stock_counts() -> None:
    data = (
        "\ufeffSKU,Location,On hand,Note\r\n"
        "KC-MOON-MUG,Studio,18,2 chipped\r\n"
        ",,,\r\n"
        "KC-BOWL,Studio,0,\r\n"
    )
    result = parse_stock_counts(data.encode(), file_format="csv")
    assert result.errors == ()
    assert result.rows == (
        StockCount("KC-MOON-MUG", "Studio", 18, "2 chipped"),
        StockCount("KC-BOWL", "Studio", 0, None),
    )
    assert result.row_numbers == (2, 4)


def test_semicolon_csv_as_excel_writes_it_in_europe() -> None:
    data = b"sku;location;on_hand\nA-1;Lager;3\n"
    assert parse_stock_counts(data, file_format="csv").rows == (StockCount("A-1", "Lager", 3),)


def test_every_bad_row_and_column_is_reported_at_once_and_no_row_is_returned() -> None:
    data = (
        b"sku,location,on_hand\n"
        b"KC-MOON-MUG,Studio,18\n"
        b"bad sku!,Studio,-1\n"
        b",Studio,2.5\n"
        b"KC-MOON-MUG,studio,4\n"
    )
    result = parse_stock_counts(data, file_format="csv")
    assert result.rows == ()
    assert not result.is_valid
    assert result.errors == (
        SheetError(3, "on_hand", "must be between 0 and 1000000, not -1"),
        SheetError(3, "sku", "'bad sku!' is not a SKU (letters, digits, '.', '_', '-')"),
        SheetError(4, "on_hand", "must be a whole number, not '2.5'"),
        SheetError(4, "sku", "required"),
    )


def test_duplicates_are_checked_once_every_cell_is_fine() -> None:
    data = b"sku,location,on_hand\nA-1,Studio,1\nB-2,Studio,1\na-1,STUDIO,2\nA-1,Shop,2\n"
    result = parse_stock_counts(data, file_format="csv")
    assert result.errors == (SheetError(4, "sku", "this SKU at this location is also on row 2"),)


def test_header_problems_are_row_1() -> None:
    result = parse_stock_counts(b"sku,place,on_hand,on hand\nA,B,1,1\n", file_format="csv")
    assert result.errors == (
        SheetError(1, "location", "required column is missing"),
        SheetError(1, "on_hand", "this column appears twice"),
        SheetError(1, "place", "unknown column; the columns are sku, location, on_hand, note"),
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the file is empty: no header row"),
        (b"sku,location,on_hand\n", None),
        (b"\xff\xfesku", "the CSV is not UTF-8 (byte 0); save it as 'CSV UTF-8'"),
    ],
)
def test_empty_and_undecodable_files(data: bytes, message: str | None) -> None:
    result = parse_stock_counts(data, file_format="csv")
    if message is None:
        assert result.errors == (SheetError(2, None, "no rows below the header"),)
    else:
        assert result.errors == (SheetError(1, None, message),)


def test_an_xlsx_of_production_batches_with_excel_numbers_and_dates() -> None:
    data = xlsx(
        [
            ["Batch ID", "SKU", "Quantity", "Expected ready date", "Location"],
            ["FIRING-12", "KC-MOON-MUG", 20, datetime(2026, 12, 10), "Studio"],  # noqa: DTZ001
            ["FIRING-12", 1001, 5.0, "2026-12-11", "Studio"],
            [None, None, None, None, None],
        ]
    )
    result = parse_production_batches(data, file_format="xlsx")
    assert result.errors == ()
    assert result.rows == (
        ProductionBatch("FIRING-12", "KC-MOON-MUG", 20, date(2026, 12, 10), "Studio"),
        ProductionBatch("FIRING-12", "1001", 5, date(2026, 12, 11), "Studio"),
    )


def test_bad_batches_name_each_row_and_column() -> None:
    data = xlsx(
        [
            ["batch_id", "sku", "quantity", "expected_ready_date", "location"],
            ["B1", "A", 0, "10/12/2026", "Studio"],
            ["B1", "A", 3.5, datetime(2026, 12, 10, 15, 30), None],  # noqa: DTZ001
            ["B1", "A", 2, "2026-12-10", "Studio"],
        ]
    )
    result = parse_production_batches(data, file_format="xlsx")
    assert result.errors == (
        SheetError(2, "expected_ready_date", "must be a date as YYYY-MM-DD, not '10/12/2026'"),
        SheetError(2, "quantity", "must be between 1 and 1000000, not 0"),
        SheetError(3, "expected_ready_date", "must be a date without a time of day"),
        SheetError(3, "location", "required"),
        SheetError(3, "quantity", "must be a whole number, not 3.5"),
    )


def test_a_file_that_is_not_an_xlsx() -> None:
    result = parse_production_batches(b"PK\x03\x04 not really", file_format="xlsx")
    assert result.errors == (SheetError(1, None, "not a readable .xlsx file (BadZipFile)"),)


def test_the_problem_names_rows_and_columns() -> None:
    errors = parse_stock_counts(b"sku,location,on_hand\nA,S,x\n", file_format="csv").errors
    problem = InvalidSpreadsheet.from_errors(errors).problem()
    assert problem["status"] == 422
    assert problem["detail"] == "1 problem(s): row 2, on_hand: must be a whole number, not 'x'"
    assert problem["errors"] == [
        {
            "loc": "rows.2.on_hand",
            "msg": "must be a whole number, not 'x'",
            "type": "spreadsheet",
            "row": 2,
            "column": "on_hand",
        }
    ]


def test_detect_format() -> None:
    assert detect_format("Counts.CSV") == "csv"
    assert detect_format("batches.xlsx") == "xlsx"
    with pytest.raises(InvalidSpreadsheet):
        detect_format("counts.xls")


@pytest.mark.parametrize("kind", list(TemplateKind))
def test_the_templates_read_back_as_empty_sheets_with_the_right_headers(kind: TemplateKind) -> None:
    parse = parse_stock_counts if kind is TemplateKind.STOCK_COUNTS else parse_production_batches
    for file_format in ("csv", "xlsx"):
        template = template_file(kind, file_format)
        assert template.filename == f"{kind.value}.{file_format}"
        result = parse(template.content, file_format=file_format)
        # Headers accepted; nothing below them yet.
        assert result.errors == (SheetError(2, None, "no rows below the header"),)


def test_the_xlsx_template_has_checks_and_a_help_sheet() -> None:
    template = template_file(TemplateKind.PRODUCTION_BATCHES, "xlsx")
    book = openpyxl.load_workbook(io.BytesIO(template.content))
    sheet = book["Production batches"]
    assert [cell.value for cell in sheet[1]] == [
        "batch_id",
        "sku",
        "quantity",
        "expected_ready_date",
        "location",
    ]
    assert sheet["A1"].font.bold
    assert sheet.freeze_panes == "A2"
    assert sorted(v.type for v in sheet.data_validations.dataValidation) == ["date", "whole"]
    assert [row[0] for row in book["Help"].iter_rows(min_row=2, values_only=True)] == [
        "batch_id",
        "sku",
        "quantity",
        "expected_ready_date",
        "location",
    ]
    assert template_file(TemplateKind.STOCK_COUNTS, "csv").content == (
        b"\xef\xbb\xbfsku,location,on_hand,note\r\n"
    )
