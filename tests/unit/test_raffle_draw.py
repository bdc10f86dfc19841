"""The raffle draw (sha256-rank-v1) is pinned: these values were computed once from the
specification in docs/raffles.md, so a change of the algorithm fails here."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stallholder.inventory import raffle_draw

SEED = "00" * 32
ENTRANTS = [
    raffle_draw.entrant_id(drop_id="drop_1", buyer_key=f"fan{n}@example.com") for n in range(4)
]


def test_the_commitment_entrants_and_order_are_the_specified_hashes() -> None:
    assert raffle_draw.commitment(SEED) == (
        "60e05bd1b195af2f94112fa7197a5c88289058840ce7c6df9693756bc6250f55"
    )
    assert [entrant[:12] for entrant in ENTRANTS] == [
        "3e6d57cee049",
        "ee21192241a9",
        "04f8f648d063",
        "70908235fba2",
    ]
    assert [raffle_draw.ticket(seed=SEED, entrant=e)[:12] for e in ENTRANTS] == [
        "00496988a083",
        "e4e2b500f008",
        "2d8eca2a7eee",
        "cd680760599e",
    ]
    # Ascending tickets: fan0, fan2, fan3, fan1.
    assert raffle_draw.draw_order(seed=SEED, entrants=ENTRANTS) == [
        ENTRANTS[0],
        ENTRANTS[2],
        ENTRANTS[3],
        ENTRANTS[1],
    ]


@given(st.permutations(ENTRANTS), st.integers(min_value=0, max_value=3))
def test_the_order_of_entries_and_repeats_do_not_change_the_draw(
    shuffled: list[str], repeat: int
) -> None:
    entrants = [*shuffled, shuffled[repeat]]
    assert raffle_draw.draw_order(seed=SEED, entrants=entrants) == raffle_draw.draw_order(
        seed=SEED, entrants=ENTRANTS
    )


def test_a_new_seed_is_64_hex_characters_and_differs_each_time() -> None:
    first, second = raffle_draw.new_seed(), raffle_draw.new_seed()
    assert len(first) == 64
    assert int(first, 16) >= 0
    assert first != second
