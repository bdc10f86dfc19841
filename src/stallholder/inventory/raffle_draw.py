"""The raffle draw, pure and public: anyone can repeat it from the published entries and
seed (``docs/raffles.md`` states it byte for byte; a test repeats it with hashlib only).

- **Seed.** 32 random bytes, written as 64 lowercase hex characters, chosen when the
  drop is created. Its commitment is ``SHA-256(seed as ASCII)`` in lowercase hex,
  published from creation on; the seed itself is published once the draw has run.
- **Entrant.** An entry is published as ``SHA-256("<drop id>\\n<buyer key>")`` in
  lowercase hex (the buyer key is the normalised email), so no address is published and
  every buyer can find their own line.
- **Ranking.** Each entrant's ticket is ``SHA-256("<seed>:<entrant>")`` in lowercase
  hex; the draw order is the entrants sorted by (ticket, entrant) ascending, as strings.
  The first ``units`` entrants win; when a winner does not buy in time, the unit passes to
  the next entrant in that order.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable

ALGORITHM = "sha256-rank-v1"


def new_seed() -> str:
    return secrets.token_hex(32)


def commitment(seed: str) -> str:
    """The published hash of ``seed``: SHA-256 of its ASCII hex, in lowercase hex."""
    return hashlib.sha256(seed.encode("ascii")).hexdigest()


def entrant_id(*, drop_id: str, buyer_key: str) -> str:
    """The pseudonym an entry is published under."""
    return hashlib.sha256(f"{drop_id}\n{buyer_key}".encode()).hexdigest()


def ticket(*, seed: str, entrant: str) -> str:
    return hashlib.sha256(f"{seed}:{entrant}".encode("ascii")).hexdigest()


def draw_order(*, seed: str, entrants: Iterable[str]) -> list[str]:
    """Every entrant, in draw order. The order of ``entrants`` does not matter."""
    return sorted(set(entrants), key=lambda entrant: (ticket(seed=seed, entrant=entrant), entrant))
