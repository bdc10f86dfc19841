"""The fixed windows of the drop rate limits (``kit.rate_limits``): aligned to the Unix
epoch, so every process agrees where a window ends, and ``Retry-After`` in whole seconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stallholder.kit.rate_limits import retry_after, window_start

NOON = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "seconds", "start"),
    [
        (NOON, 60, NOON),
        (NOON + timedelta(seconds=59, microseconds=999_999), 60, NOON),
        (NOON + timedelta(seconds=60), 60, NOON + timedelta(minutes=1)),
        (NOON + timedelta(minutes=7, seconds=3), 300, NOON + timedelta(minutes=5)),
        (NOON + timedelta(hours=5), 86_400, datetime(2026, 11, 30, tzinfo=UTC)),
    ],
)
def test_a_window_starts_on_a_multiple_of_its_length_since_the_epoch(
    now: datetime, seconds: int, start: datetime
) -> None:
    assert window_start(now, window_seconds=seconds) == start


@pytest.mark.parametrize(
    ("elapsed", "wait"),
    [
        (timedelta(0), 60),
        (timedelta(seconds=15), 45),
        (timedelta(seconds=15, milliseconds=1), 45),
        (timedelta(seconds=59, milliseconds=500), 1),
        # Past its end (a late caller): still at least a second.
        (timedelta(seconds=61), 1),
    ],
)
def test_retry_after_is_the_whole_seconds_left_in_the_window(elapsed: timedelta, wait: int) -> None:
    assert retry_after(NOON + elapsed, start=NOON, window_seconds=60) == wait
