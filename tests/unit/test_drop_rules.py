"""Drop states and who counts as one buyer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stallholder.inventory.drop_rules import buyer_key, drop_state

OPENS = datetime(2026, 12, 1, 17, 0, tzinfo=UTC)
CLOSES = OPENS + timedelta(hours=2)


@pytest.mark.parametrize(
    ("now", "remaining", "state"),
    [
        (OPENS - timedelta(seconds=1), 5, "scheduled"),
        (OPENS, 5, "open"),
        (OPENS, 0, "sold_out"),
        (CLOSES - timedelta(microseconds=1), 1, "open"),
        (CLOSES, 5, "closed"),
        (CLOSES, 0, "closed"),
    ],
)
def test_a_drops_state_follows_its_half_open_window_and_what_remains(
    now: datetime, remaining: int, state: str
) -> None:
    assert drop_state(now=now, opens_at=OPENS, closes_at=CLOSES, remaining=remaining) == state


@pytest.mark.parametrize(
    ("email", "key"),
    [
        ("Jane.Doe+drop@GMail.com", "janedoe@gmail.com"),
        ("j.a.n.e.doe@googlemail.com", "janedoe@gmail.com"),
        ("jane+tab2@outlook.com", "jane@outlook.com"),
        ("jane.doe@outlook.com", "jane.doe@outlook.com"),
        ("Jane+x@example.com", "jane+x@example.com"),
        ("jane@icloud.com", "jane@icloud.com"),
    ],
)
def test_one_person_is_one_buyer_however_the_address_is_spelled(email: str, key: str) -> None:
    assert buyer_key(email) == key
