"""Splitting one amount across several payees in proportion to their shares. Pure.

A consolidated charge pays several creators' invoices at once; the processor takes one
fee on the whole charge, and each creator bears the part of it that its invoice is of
the charge (ADR 0016). A wallet top-up's fee is attributed to the payments made from it
the same way in the fee report, and a dispute of a consolidated charge is split over its
orders the same way (``orders.disputes``; this lives in ``kit`` because orders may not
import billing). The parts are whole minor units and must add back up to the fee
exactly, so the split is by the largest-remainder method (Hamilton's): everyone gets the
floor of their exact share, and the minor units left over go one each to the largest
fractional remainders, ties to the earlier payee. No float touches an amount.
"""

from __future__ import annotations

from collections.abc import Sequence


def allocate(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights``: the parts sum to ``total`` exactly,
    each is its exact share rounded down or up (never further off than one minor unit),
    and a zero weight gets nothing.

    Raises:
        ValueError: ``total`` or a weight is negative, or every weight is zero while
            ``total`` is not.
    """
    if total < 0 or any(weight < 0 for weight in weights):
        raise ValueError("a total and its weights are never negative")
    whole = sum(weights)
    if whole == 0:
        if total != 0:
            raise ValueError("a positive total cannot be split over zero weights")
        return [0 for _ in weights]
    floors = [total * weight // whole for weight in weights]
    remainders = [total * weight % whole for weight in weights]
    left_over = total - sum(floors)
    # The largest remainders first; a tie goes to the earlier weight (a stable sort).
    order = sorted(range(len(weights)), key=lambda index: -remainders[index])
    for index in order[:left_over]:
        floors[index] += 1
    return floors
