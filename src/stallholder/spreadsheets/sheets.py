"""Reading and writing spreadsheet files, and checking their rows: pure, bytes in and out.

A template is a list of columns; each column has a header, whether it is required, and a
parser from a cell to a typed value (or a message saying what is wrong). Reading a file
checks the header row, then every cell of every row, and reports *every* problem at once
by the row number and column header a person sees in their spreadsheet program (the
header is row 1). A file with any problem yields no rows, so an import built on it is
all-or-nothing.

CSV: UTF-8 (with or without the BOM Excel writes), separated by commas, semicolons (as
Excel writes in much of Europe) or tabs. XLSX: the first worksheet, read with openpyxl in
read-only mode; numbers and dates come as Excel stored them. Blank rows are skipped.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Generic, Literal, TypeVar

import openpyxl
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.datavalidation import DataValidation

from stallholder.kit.errors import ValidationFailed

FileFormat = Literal["csv", "xlsx"]
T = TypeVar("T")

# Larger imports are split; a file this big is a mistake (or an attack), not a stock count.
MAX_FILE_BYTES = 5 * 1024 * 1024
MAX_ROWS = 10_000
XLSX_MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"


class CellProblem(ValueError):
    """Raised by a column's parser: the message says what is wrong with the cell."""


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a template. ``parse`` gets the cell (a str from CSV; str, int, float,
    datetime from XLSX; never None or blank, those are "missing") and returns its value
    or raises ``CellProblem``."""

    header: str
    parse: Callable[[Any], Any]
    required: bool = True
    help: str = ""
    example: str = ""
    # Excel data validation for the template: "whole" (integer ≥ 0) or "date".
    excel_check: Literal["whole", "date"] | None = None


@dataclass(frozen=True, slots=True, order=True)
class SheetError:
    """A problem at ``row`` (1 is the header) in ``column`` (its header; None for the
    whole row or file)."""

    row: int
    column: str | None
    message: str

    def loc(self) -> str:
        return f"rows.{self.row}" + (f".{self.column}" if self.column else "")


@dataclass(frozen=True, slots=True)
class SheetResult(Generic[T]):
    """The typed rows of a file with no problem, or every problem and no rows."""

    rows: tuple[T, ...] = ()
    errors: tuple[SheetError, ...] = ()
    # The sheet row each of ``rows`` came from (for messages of a later apply step).
    row_numbers: tuple[int, ...] = field(default=())

    @property
    def is_valid(self) -> bool:
        return not self.errors


class InvalidSpreadsheet(ValidationFailed):
    slug = "invalid-spreadsheet"
    title = "The spreadsheet has problems; nothing was imported"

    @classmethod
    def from_errors(cls, errors: Sequence[SheetError]) -> InvalidSpreadsheet:
        shown = "; ".join(
            f"row {e.row}" + (f", {e.column}" if e.column else "") + f": {e.message}"
            for e in errors[:10]
        )
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        return cls(
            f"{len(errors)} problem(s): {shown}{more}",
            errors=[
                {
                    "loc": e.loc(),
                    "msg": e.message,
                    "type": "spreadsheet",
                    "row": e.row,
                    "column": e.column,
                }
                for e in errors
            ],
        )


def detect_format(filename: str) -> FileFormat:
    """The format a file name says. Raises ``InvalidSpreadsheet`` for anything else."""
    lowered = filename.lower()
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith(".xlsx"):
        return "xlsx"
    raise InvalidSpreadsheet.from_errors(
        [SheetError(1, None, f"{filename!r} is neither a .csv nor a .xlsx file")]
    )


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _csv_rows(data: bytes) -> Iterator[list[Any]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CellProblem(
            f"the CSV is not UTF-8 (byte {error.start}); save it as 'CSV UTF-8'"
        ) from None
    sample = text[:4096]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    yield from csv.reader(io.StringIO(text, newline=""), dialect)


def _xlsx_rows(data: bytes) -> Iterator[list[Any]]:
    try:
        book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as error:
        raise CellProblem(f"not a readable .xlsx file ({error.__class__.__name__})") from None
    try:
        sheet = book.worksheets[0]
        for values in sheet.iter_rows(values_only=True):
            yield list(values)
    finally:
        book.close()


def read_sheet(
    data: bytes,
    *,
    file_format: FileFormat,
    columns: Sequence[Column],
    build: Callable[[dict[str, Any]], T],
    check_rows: Callable[[Sequence[tuple[int, T]]], list[SheetError]] | None = None,
) -> SheetResult[T]:
    """Every row of ``data`` as ``build(values by header)``, or every problem.

    Headers match case-insensitively with spaces and underscores alike, in any order;
    a missing required column or an unknown one is a problem of row 1. ``check_rows`` sees
    the built rows (with their sheet row numbers) for problems across rows (duplicates).
    """
    if len(data) > MAX_FILE_BYTES:
        return SheetResult(
            errors=(SheetError(1, None, f"the file is over {MAX_FILE_BYTES // 1024 // 1024} MB"),)
        )
    reader = _csv_rows if file_format == "csv" else _xlsx_rows
    errors: list[SheetError] = []
    built: list[tuple[int, T]] = []
    try:
        lines = reader(data)
        header = next(lines, None)
        if header is None or all(_is_blank(cell) for cell in header):
            return SheetResult(errors=(SheetError(1, None, "the file is empty: no header row"),))
        positions = _match_header(header, columns, errors)
        for number, cells in enumerate(lines, start=2):
            if all(_is_blank(cell) for cell in cells):
                continue
            if number > MAX_ROWS + 1:
                errors.append(
                    SheetError(number, None, f"more than {MAX_ROWS} rows; split the file")
                )
                break
            if errors and positions is None:
                break
            assert positions is not None
            row = _read_row(number, cells, columns, positions, errors)
            if row is not None:
                built.append((number, build(row)))
    except CellProblem as problem:
        errors.append(SheetError(1, None, str(problem)))
    if not errors and check_rows is not None:
        errors += check_rows(built)
    if not errors and not built:
        errors.append(SheetError(2, None, "no rows below the header"))
    if errors:
        return SheetResult(errors=tuple(sorted(errors)))
    return SheetResult(
        rows=tuple(row for _, row in built), row_numbers=tuple(number for number, _ in built)
    )


def _key(header: Any) -> str:
    return " ".join(str(header).replace("_", " ").split()).lower()


def _match_header(
    header: Sequence[Any], columns: Sequence[Column], errors: list[SheetError]
) -> dict[str, int] | None:
    wanted = {_key(column.header): column for column in columns}
    positions: dict[str, int] = {}
    for index, cell in enumerate(header):
        if _is_blank(cell):
            continue
        column = wanted.get(_key(cell))
        if column is None:
            errors.append(
                SheetError(
                    1,
                    str(cell),
                    "unknown column; the columns are "
                    + ", ".join(column.header for column in columns),
                )
            )
        elif column.header in positions:
            errors.append(SheetError(1, column.header, "this column appears twice"))
        else:
            positions[column.header] = index
    for column in columns:
        if column.required and column.header not in positions:
            errors.append(SheetError(1, column.header, "required column is missing"))
    return None if errors else positions


def _read_row(
    number: int,
    cells: Sequence[Any],
    columns: Sequence[Column],
    positions: dict[str, int],
    errors: list[SheetError],
) -> dict[str, Any] | None:
    values: dict[str, Any] = {}
    is_valid = True
    for column in columns:
        index = positions.get(column.header)
        cell = cells[index] if index is not None and index < len(cells) else None
        if _is_blank(cell):
            if column.required:
                errors.append(SheetError(number, column.header, "required"))
                is_valid = False
            values[column.header] = None
            continue
        try:
            values[column.header] = column.parse(cell.strip() if isinstance(cell, str) else cell)
        except CellProblem as problem:
            errors.append(SheetError(number, column.header, str(problem)))
            is_valid = False
    return values if is_valid else None


# Cell parsers shared by templates.


def whole_number(*, minimum: int, maximum: int) -> Callable[[Any], int]:
    """An integer in ``[minimum, maximum]``: ``12``, ``"12"``, or Excel's ``12.0``; never
    ``12.5`` or ``"1,2"``."""

    def parse(cell: Any) -> int:
        if isinstance(cell, bool):
            raise CellProblem("must be a whole number")
        if isinstance(cell, float):
            if not cell.is_integer():
                raise CellProblem(f"must be a whole number, not {cell:g}")
            value = int(cell)
        elif isinstance(cell, int):
            value = cell
        else:
            text = str(cell)
            if not text.lstrip("-").isdigit() or not text.isascii():
                raise CellProblem(f"must be a whole number, not {text!r}")
            value = int(text)
        if not minimum <= value <= maximum:
            raise CellProblem(f"must be between {minimum} and {maximum}, not {value}")
        return value

    return parse


def calendar_date(cell: Any) -> date:
    """An ISO date (``2026-12-01``) or a date cell of Excel."""
    if isinstance(cell, datetime):
        if cell.time() != datetime.min.time():
            raise CellProblem("must be a date without a time of day")
        return cell.date()
    if isinstance(cell, date):
        return cell
    try:
        return date.fromisoformat(str(cell))
    except ValueError:
        raise CellProblem(f"must be a date as YYYY-MM-DD, not {str(cell)!r}") from None


def text(
    *, max_length: int, pattern: Callable[[str], bool] | None = None, rule: str = ""
) -> Callable[[Any], str]:
    """A string of at most ``max_length`` characters (numbers from Excel become their digits:
    an SKU typed as 1001 is "1001")."""

    def parse(cell: Any) -> str:
        if isinstance(cell, float) and cell.is_integer():
            cell = int(cell)
        value = str(cell).strip()
        if len(value) > max_length:
            raise CellProblem(f"must be at most {max_length} characters")
        if pattern is not None and not pattern(value):
            raise CellProblem(f"{value!r} {rule}")
        return value

    return parse


# Templates for people to fill in.


def template_csv(columns: Sequence[Column]) -> bytes:
    """A CSV template: the header row only (an example row would be imported if left in).
    With a BOM, so Excel opens it as UTF-8."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow([column.header for column in columns])
    return ("\ufeff" + out.getvalue()).encode("utf-8")


def template_xlsx(columns: Sequence[Column], *, title: str) -> bytes:
    """An XLSX template: a bold, frozen header row, Excel's own checks on number and date
    columns, and a second sheet that explains each column with an example."""
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = title[:31]
    sheet.append([column.header for column in columns])
    sheet.freeze_panes = "A2"
    for index, column in enumerate(columns, start=1):
        letter = get_column_letter(index)
        sheet[f"{letter}1"].font = Font(bold=True)
        sheet.column_dimensions[letter].width = max(14, len(column.header) + 4)
        if column.excel_check is not None:
            check = (
                DataValidation(type="whole", operator="greaterThanOrEqual", formula1="0")
                if column.excel_check == "whole"
                else DataValidation(type="date", operator="greaterThan", formula1="1")
            )
            check.error = column.help or f"{column.header}: see the Help sheet"
            check.showErrorMessage = True
            sheet.add_data_validation(check)
            check.add(f"{letter}2:{letter}{MAX_ROWS + 1}")
    help_sheet = book.create_sheet("Help")
    help_sheet.append(["column", "required", "what to put", "example"])
    for cell in help_sheet[1]:
        cell.font = Font(bold=True)
    for column in columns:
        help_sheet.append(
            [column.header, "yes" if column.required else "no", column.help, column.example]
        )
    help_sheet.column_dimensions["C"].width = 70
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
