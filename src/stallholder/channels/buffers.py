"""What a channel is shown of a SKU's stock: a pure function of ``available`` and the
channel's rules (``docs/channels.md#buffers``).

The rules apply in this order, each to the result of the one before:

1. ``buffer_units``: keep this many back (a fixed buffer);
2. ``buffer_percent``: keep this share of ``available`` back, rounded up to whole units
   (a 10% buffer of 15 keeps 2 back), so the channel never sees a unit the buffer covers;
3. ``zero_below``: when what is left is below this, show 0 (the last few units are sold
   only on the creator's own store);
4. ``max_shown``: never show more than this (a scarcity display, or a channel's cap).

The result is never negative.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rules:
    buffer_units: int = 0
    buffer_percent: int = 0  # 0 to 100
    zero_below: int | None = None
    max_shown: int | None = None

    def __post_init__(self) -> None:
        if self.buffer_units < 0:
            raise ValueError("buffer_units must not be negative")
        if not 0 <= self.buffer_percent <= 100:
            raise ValueError("buffer_percent must be from 0 to 100")
        if self.zero_below is not None and self.zero_below < 0:
            raise ValueError("zero_below must not be negative")
        if self.max_shown is not None and self.max_shown < 0:
            raise ValueError("max_shown must not be negative")


def shown(available: int, rules: Rules) -> int:
    """The quantity a channel with ``rules`` shows when ``available`` units are free."""
    left = max(0, available) - rules.buffer_units
    # Ceiling of available × percent / 100, in integers.
    left -= -(-max(0, available) * rules.buffer_percent // 100)
    left = max(0, left)
    if rules.zero_below is not None and left < rules.zero_below:
        return 0
    if rules.max_shown is not None:
        left = min(left, rules.max_shown)
    return left
