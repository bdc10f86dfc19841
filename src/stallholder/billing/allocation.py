"""The fee split of a consolidated charge: ``kit.allocation.allocate`` (largest
remainder), kept importable here where billing first used it."""

from stallholder.kit.allocation import allocate

__all__ = ["allocate"]
