"""Pure stock arithmetic: what is available, where a hold takes its units from, and which
thresholds a change crosses. Integers only, no I/O.

``available = on_hand − reserved − allocated − safety_stock``, never below zero. The
database enforces ``on_hand ≥ reserved + allocated`` (units promised to buyers always
exist); the safety stock is a buffer that only sales respect, so a safety stock set above
what is free makes ``available`` 0, not negative.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Quantities:
    """One stock level's counts (one SKU at one location), or their sum over locations."""

    on_hand: int
    reserved: int
    allocated: int
    safety_stock: int = 0

    @property
    def committed(self) -> int:
        """Units promised to buyers: held in open checkouts or paid for."""
        return self.reserved + self.allocated

    @property
    def available(self) -> int:
        return available(
            on_hand=self.on_hand,
            reserved=self.reserved,
            allocated=self.allocated,
            safety_stock=self.safety_stock,
        )

    def __add__(self, other: Quantities) -> Quantities:
        return Quantities(
            on_hand=self.on_hand + other.on_hand,
            reserved=self.reserved + other.reserved,
            allocated=self.allocated + other.allocated,
            safety_stock=self.safety_stock + other.safety_stock,
        )


ZERO = Quantities(on_hand=0, reserved=0, allocated=0, safety_stock=0)


def available(*, on_hand: int, reserved: int, allocated: int, safety_stock: int) -> int:
    """What can still be sold: never negative."""
    return max(0, on_hand - reserved - allocated - safety_stock)


def total_available(levels: Sequence[Quantities]) -> int:
    """What a SKU has left over all its locations: each location's own ``available``
    summed (one location's safety stock never hides another's free units)."""
    return sum(level.available for level in levels)


@dataclass(frozen=True, slots=True)
class Take:
    """``quantity`` units to hold at the stock level ``level_id``."""

    level_id: int
    quantity: int


def plan_takes(candidates: Sequence[tuple[int, int]], quantity: int) -> list[Take] | None:
    """Where ``quantity`` units come from, given ``(level id, available)`` in the order
    locations are drawn from (their creation order, ``docs/inventory.md``): the first
    location that has them all, else as many as each location has, in order. None when
    all of them together have fewer than ``quantity``.

    Holding one line at one location where it can be keeps a parcel together."""
    if quantity < 1:
        raise ValueError(f"a hold takes at least one unit, not {quantity}")
    for level_id, free in candidates:
        if free >= quantity:
            return [Take(level_id=level_id, quantity=quantity)]
    takes: list[Take] = []
    remaining = quantity
    for level_id, free in candidates:
        if remaining == 0:
            break
        if free <= 0:
            continue
        taken = min(free, remaining)
        takes.append(Take(level_id=level_id, quantity=taken))
        remaining -= taken
    return takes if remaining == 0 else None


def in_key_order(takes: Sequence[Take]) -> list[Take]:
    """The takes in primary-key order of their stock levels, one per level: the order
    every writer locks stock rows in, so two holds never wait on each other in a cycle."""
    merged: dict[int, int] = {}
    for take in takes:
        merged[take.level_id] = merged.get(take.level_id, 0) + take.quantity
    return [Take(level_id=level_id, quantity=merged[level_id]) for level_id in sorted(merged)]


Crossing = Literal["low", "out_of_stock"]


def crossing(*, before: int, after: int, low_threshold: int | None) -> Crossing | None:
    """The threshold a change of ``available`` from ``before`` to ``after`` crosses
    downwards, if any: ``out_of_stock`` on reaching 0, ``low`` on reaching
    ``low_threshold`` or below (without reaching 0). A change that stays on one side of
    both, or goes up, crosses nothing, so each crossing is reported once."""
    if after >= before:
        return None
    if after == 0:
        return "out_of_stock"
    if low_threshold is not None and after <= low_threshold < before:
        return "low"
    return None


def delta_for(*, on_hand: int, delta: int | None, set_to: int | None) -> int:
    """The change to ``on_hand`` an adjustment makes: ``delta`` as given, or what takes
    ``on_hand`` to ``set_to`` (a count)."""
    if (delta is None) == (set_to is None):
        raise ValueError("an adjustment gives exactly one of delta and set")
    if delta is not None:
        return delta
    assert set_to is not None
    return set_to - on_hand
