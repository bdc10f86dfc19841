"""Signed download links and the store pages' pure helpers (sizes, stock states): exact
values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stallholder.digital import links
from stallholder.inventory.drops import DropView
from stallholder.inventory.models import Drop, DropItem
from stallholder.web.store import format_size, stock_state

KEY = b"k"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SETUP = links.Links(key=KEY, base_url="https://shop.example", ttl=timedelta(days=7), limit=5)


def test_a_link_is_signed_over_order_file_and_expiry() -> None:
    link = links.sign(SETUP, order_id="ord_1", file_id="file_1", now=NOW)
    expires = int((NOW + timedelta(days=7)).timestamp())
    assert expires == 1772971200
    assert link.expires_at == datetime(2026, 3, 8, 12, 0, tzinfo=UTC)
    assert link.url == (
        "https://shop.example/d/ord_1/file_1?expires=1772971200"
        f"&signature={links.signature(KEY, order_id='ord_1', file_id='file_1', expires=expires)}"
    )
    # HMAC-SHA256 over "v1:ord_1:file_1:1773000000", URL-safe base64 without padding.
    assert (
        links.signature(KEY, order_id="ord_1", file_id="file_1", expires=1773000000)
        == "_HfA0OIh9JL6UfrxWacjJGUKDYBjIDTE9vQn8b69drE"
    )


@pytest.mark.parametrize(
    ("order_id", "file_id", "expires", "key", "verdict"),
    [
        ("ord_1", "file_1", "1772971200", KEY, "valid"),
        ("ord_2", "file_1", "1772971200", KEY, "tampered"),
        ("ord_1", "file_2", "1772971200", KEY, "tampered"),
        ("ord_1", "file_1", "1772971201", KEY, "tampered"),
        ("ord_1", "file_1", "1772971200", b"other", "tampered"),
        ("ord_1", "file_1", "-1", KEY, "tampered"),
        ("ord_1", "file_1", "", KEY, "tampered"),
    ],
)
def test_verify_finds_any_change(
    order_id: str, file_id: str, expires: str, key: bytes, verdict: str
) -> None:
    given = links.signature(KEY, order_id="ord_1", file_id="file_1", expires=1772971200)
    assert (
        links.verify(key, order_id=order_id, file_id=file_id, expires=expires, given=given, now=NOW)
        == verdict
    )


def test_a_link_expires_at_its_second() -> None:
    given = links.signature(KEY, order_id="o", file_id="f", expires=1772971200)
    at = datetime.fromtimestamp(1772971200, UTC)

    def verdict(now: datetime) -> str:
        return links.verify(
            KEY, order_id="o", file_id="f", expires="1772971200", given=given, now=now
        )

    assert verdict(at - timedelta(seconds=1)) == "valid"
    assert verdict(at) == "expired"


def test_file_sizes_read_as_babel_writes_them() -> None:
    assert [format_size(n) for n in (1, 52, 1000, 1234, 345_678, 2_500_000, 3 * 10**9)] == [
        "1 byte",
        "52 bytes",
        "1 kB",
        "1.2 kB",
        "345.7 kB",
        "2.5 MB",
        "3 GB",
    ]


def _drop(mode: str, *, quantity: int = 4, sold: int = 0) -> DropView:
    drop = Drop(
        id="drop_1",
        creator_id="cr_1",
        name="Mugs",
        mode=mode,
        opens_at=NOW + timedelta(hours=1),
        closes_at=NOW + timedelta(hours=3),
        reservation_minutes=10,
        created_at=NOW,
    )
    item = DropItem(
        creator_id="cr_1",
        drop_id="drop_1",
        price_id="price_1",
        quantity=quantity,
        held=0,
        sold=sold,
    )
    return DropView(drop=drop, items=[item])


@pytest.mark.parametrize(
    ("available", "drop", "at", "expected"),
    [
        (None, None, NOW, ("In stock", "InStock", True)),
        (6, None, NOW, ("In stock", "InStock", True)),
        (5, None, NOW, ("Only 5 left", "InStock", True)),
        (0, None, NOW, ("Sold out", "OutOfStock", False)),
        (None, "first_come", NOW, ("Not on sale yet", "PreOrder", False)),
        (None, "first_come", NOW + timedelta(hours=1), ("Only 4 left", "InStock", True)),
        (2, "first_come", NOW + timedelta(hours=1), ("Only 2 left", "InStock", True)),
        (None, "first_come", NOW + timedelta(hours=3), ("Drop closed", "OutOfStock", False)),
        (None, "raffle", NOW, ("Not on sale yet", "PreOrder", False)),
        (None, "raffle", NOW + timedelta(hours=1), ("Raffle open for entries", "PreOrder", False)),
        (None, "raffle", NOW + timedelta(hours=3), ("Raffle entries closed", "OutOfStock", False)),
    ],
)
def test_stock_state(
    available: int | None, drop: str | None, at: datetime, expected: tuple[str, str, bool]
) -> None:
    view = None if drop is None else _drop(drop)
    state = stock_state(available=available, drop=view, price_id="price_1", now=at)
    assert (state.label, state.availability, state.can_buy) == expected


def test_a_sold_out_drop_is_out_of_stock() -> None:
    state = stock_state(
        available=None,
        drop=_drop("first_come", sold=4),
        price_id="price_1",
        now=NOW + timedelta(hours=1),
    )
    assert (state.label, state.availability, state.can_buy) == ("Sold out", "OutOfStock", False)
