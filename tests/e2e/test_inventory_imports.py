"""Spreadsheet imports over HTTP, on SQLite and PostgreSQL: stock counts and production
batches, all rows or none, every problem named by row and column; incoming batches and
receiving them; template downloads."""

from __future__ import annotations

import io
from datetime import date
from typing import Any

import httpx
import openpyxl
import pytest

from tests.conftest import Api, bearer

pytestmark = pytest.mark.anyio
PROBLEM = "https://stallholder.dev/problems/"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


class Studio:
    """A creator with two mugs (``MUG-W``, ``MUG-B``), a location "Studio" holding 10
    ``MUG-W``, 3 of them in an open checkout."""

    def __init__(self, api: Api, key: str, studio: str) -> None:
        self.api = api
        self.key = key
        self.studio = studio

    async def upload(
        self,
        data: bytes,
        *,
        kind: str = "stock_counts",
        file_name: str = "counts.csv",
        content_type: str = "text/csv",
    ) -> httpx.Response:
        return await self.api.http.post(
            "/v1/inventory/imports",
            params={"kind": kind, "file_name": file_name},
            headers={**bearer(self.key), "Content-Type": content_type},
            content=data,
        )

    async def stock(self, sku: str) -> dict[str, Any]:
        response = await self.api.http.get(f"/v1/inventory/{sku}", headers=bearer(self.key))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def movements(self, sku: str) -> list[tuple[str, int, int, str, str | None]]:
        response = await self.api.http.get(
            f"/v1/inventory/{sku}/movements", headers=bearer(self.key)
        )
        return [
            (m["kind"], m["quantity"], m["on_hand_after"], m["reason"], m["reference"])
            for m in response.json()["data"]
        ]


@pytest.fixture
async def studio(api: Api) -> Studio:
    creator = await api.creator(name="Kiln & Clay")
    key = creator["secret_key"]
    product = await api.product(
        key,
        name="Mug",
        variants=[{"sku": "MUG-W", "name": "White"}, {"sku": "MUG-B", "name": "Blue"}],
    )
    price = await api.price(key, product=product["id"], unit_amount=4800)
    response = await api.http.post("/v1/locations", headers=bearer(key), json={"name": "Studio"})
    location: str = response.json()["id"]
    counted = await api.http.post(
        "/v1/inventory/adjustments",
        headers=bearer(key),
        json={"sku": "MUG-W", "location": location, "set": 10, "reason": "first count"},
    )
    assert counted.status_code == 200, counted.text
    await api.session(key, price=price["id"], quantity=3)
    return Studio(api, key, location)


def _errors(response: httpx.Response) -> list[tuple[str, int, str | None]]:
    return [(e["loc"], e["row"], e["column"]) for e in response.json()["errors"]]


async def test_a_count_file_with_problems_on_several_rows_changes_nothing(
    studio: Studio,
) -> None:
    before_w = await studio.stock("MUG-W")
    file = (
        b"sku,location,on_hand,note\n"
        b"MUG-W,Studio,1,\n"  # 3 are held in a checkout
        b"NOPE-1,Studio,5,\n"
        b"MUG-B,Attic,4,\n"
        b"MUG-B,Studio,7,fine on its own\n"
    )

    response = await studio.upload(file)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == PROBLEM + "invalid-spreadsheet"
    assert _errors(response) == [
        ("rows.2.on_hand", 2, "on_hand"),
        ("rows.3.sku", 3, "sku"),
        ("rows.4.location", 4, "location"),
    ]
    messages = [e["msg"] for e in response.json()["errors"]]
    assert messages == [
        "3 of MUG-W at Studio are held in checkouts or paid for; the count cannot be below 3",
        "none of your variants has the SKU 'NOPE-1'",
        "you have no location named 'Attic'",
    ]
    assert await studio.stock("MUG-W") == before_w
    untouched_b = await studio.stock("MUG-B")
    assert (untouched_b["tracked"], untouched_b["locations"]) == (False, [])
    assert await studio.movements("MUG-W") == [("adjusted", 10, 10, "first count", None)]
    assert await studio.movements("MUG-B") == []


async def test_a_file_with_bad_cells_on_several_rows_names_each_and_changes_nothing(
    studio: Studio,
) -> None:
    file = b"sku,location,on_hand\nMUG-W,Studio,many\n,Studio,4\nMUG-B,Studio,-2\n"

    response = await studio.upload(file)

    assert response.status_code == 422, response.text
    assert [(loc, row, column) for loc, row, column in _errors(response)] == [
        ("rows.2.on_hand", 2, "on_hand"),
        ("rows.3.sku", 3, "sku"),
        ("rows.4.on_hand", 4, "on_hand"),
    ]
    assert (await studio.stock("MUG-W"))["on_hand"] == 10


async def test_a_good_count_file_sets_on_hand_with_the_file_named_in_the_reason(
    studio: Studio,
) -> None:
    file = b"sku,location,on_hand,note\nmug-w,studio,8,2 chipped\nMUG-B,Studio,7,\n"

    response = await studio.upload(file, file_name="december.csv")

    assert response.status_code == 200, response.text
    assert response.json() == {
        "object": "inventory_import",
        "kind": "stock_counts",
        "file_name": "december.csv",
        "rows": 2,
        "changed": 2,
        "unchanged": 0,
        "created": 0,
        "updated": 0,
    }
    white = await studio.stock("MUG-W")
    assert (white["on_hand"], white["reserved"], white["available"]) == (8, 3, 5)
    assert (await studio.stock("MUG-B"))["on_hand"] == 7
    assert (await studio.movements("MUG-W"))[0] == (
        "adjusted",
        -2,
        8,
        "import december.csv: 2 chipped",
        None,
    )
    assert await studio.movements("MUG-B") == [("adjusted", 7, 7, "import december.csv", None)]
    again = await studio.upload(file, file_name="december.csv")
    assert (again.json()["changed"], again.json()["unchanged"]) == (0, 2)


def _xlsx(rows: list[list[Any]]) -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    for row in rows:
        sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


async def test_production_batches_show_as_incoming_and_become_stock_when_received(
    studio: Studio,
) -> None:
    file = _xlsx(
        [
            ["batch_id", "sku", "quantity", "expected_ready_date", "location"],
            ["FIRING-12", "MUG-B", 20, date(2026, 12, 10), "Studio"],
            ["FIRING-12", "MUG-W", 12, date(2026, 12, 10), studio.studio],
            ["FIRING-13", "MUG-B", 6, date(2026, 12, 3), "Studio"],
        ]
    )

    imported = await studio.upload(
        file, kind="production_batches", file_name="firings.xlsx", content_type=XLSX
    )

    assert imported.status_code == 200, imported.text
    assert (imported.json()["created"], imported.json()["updated"]) == (3, 0)
    blue = await studio.stock("MUG-B")
    assert [
        (i["batch"], i["quantity"], i["expected_on"], i["location"], i["location_name"])
        for i in blue["incoming"]
    ] == [
        ("FIRING-13", 6, "2026-12-03", studio.studio, "Studio"),
        ("FIRING-12", 20, "2026-12-10", studio.studio, "Studio"),
    ]
    assert (blue["tracked"], blue["on_hand"]) == (False, 0)

    batch = blue["incoming"][1]["id"]
    received = await studio.api.http.post(
        f"/v1/inventory/batches/{batch}/receive", headers=bearer(studio.key), json={"quantity": 18}
    )
    assert received.status_code == 200, received.text
    body = received.json()
    assert (body["status"], body["quantity"], body["received_quantity"]) == ("received", 20, 18)
    after = await studio.stock("MUG-B")
    assert (after["on_hand"], [i["batch"] for i in after["incoming"]]) == (18, ["FIRING-13"])
    assert await studio.movements("MUG-B") == [
        ("received", 18, 18, "batch FIRING-12 received", batch)
    ]

    twice = await studio.api.http.post(
        f"/v1/inventory/batches/{batch}/receive", headers=bearer(studio.key)
    )
    assert (twice.status_code, twice.json()["type"]) == (409, PROBLEM + "batch-already-received")
    assert (await studio.stock("MUG-B"))["on_hand"] == 18
    missing = await studio.api.http.post(
        "/v1/inventory/batches/bat_nope/receive", headers=bearer(studio.key)
    )
    assert (missing.status_code, missing.json()["type"]) == (404, PROBLEM + "batch-not-found")

    # Re-importing the plan updates what is still incoming and refuses a received batch.
    revised = _xlsx(
        [
            ["batch_id", "sku", "quantity", "expected_ready_date", "location"],
            ["FIRING-13", "MUG-B", 8, "2026-12-04", "Studio"],
            ["FIRING-12", "MUG-B", 20, "2026-12-10", "Studio"],
        ]
    )
    refused = await studio.upload(
        revised, kind="production_batches", file_name="firings.xlsx", content_type=XLSX
    )
    assert refused.status_code == 422, refused.text
    assert _errors(refused) == [("rows.3.batch_id", 3, "batch_id")]
    assert [(i["batch"], i["quantity"]) for i in (await studio.stock("MUG-B"))["incoming"]] == [
        ("FIRING-13", 6)
    ]
    updated = await studio.upload(
        _xlsx(
            [
                ["batch_id", "sku", "quantity", "expected_ready_date", "location"],
                ["FIRING-13", "MUG-B", 8, "2026-12-04", "Studio"],
            ]
        ),
        kind="production_batches",
        file_name="firings.xlsx",
        content_type=XLSX,
    )
    assert (updated.json()["created"], updated.json()["updated"]) == (0, 1)
    assert [
        (i["batch"], i["quantity"], i["expected_on"])
        for i in (await studio.stock("MUG-B"))["incoming"]
    ] == [("FIRING-13", 8, "2026-12-04")]


async def test_the_format_follows_the_file_name_when_the_content_type_says_nothing(
    studio: Studio,
) -> None:
    neither = await studio.upload(
        b"sku,location,on_hand\n", file_name="counts.ods", content_type="application/octet-stream"
    )
    by_name = await studio.upload(
        b"sku,location,on_hand\nMUG-W,Studio,9\n",
        file_name="counts.csv",
        content_type="application/octet-stream",
    )

    assert neither.status_code == 422
    assert _errors(neither) == [("rows.1", 1, None)]
    assert by_name.status_code == 200, by_name.text
    assert (await studio.stock("MUG-W"))["on_hand"] == 9


async def test_templates_download_as_csv_and_xlsx(api: Api) -> None:
    csv = await api.http.get("/v1/inventory/templates/stock_counts.csv")
    xlsx = await api.http.get("/v1/inventory/templates/production_batches.xlsx")
    unknown = await api.http.get("/v1/inventory/templates/products.csv")

    assert csv.status_code == 200
    assert csv.headers["content-type"] == "text/csv; charset=utf-8"
    assert csv.headers["content-disposition"] == 'attachment; filename="stock_counts.csv"'
    assert csv.content == "\ufeffsku,location,on_hand,note\r\n".encode()
    assert xlsx.headers["content-type"] == XLSX
    book = openpyxl.load_workbook(io.BytesIO(xlsx.content))
    assert [cell.value for cell in book.worksheets[0][1]] == [
        "batch_id",
        "sku",
        "quantity",
        "expected_ready_date",
        "location",
    ]
    assert unknown.status_code == 422
