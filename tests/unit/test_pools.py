"""``kit.pools.FairQueue`` gives no item away twice and loses none, whatever arrives in the
same turn of the event loop as the item: a cancellation, a timeout, or a caller outside
SQLAlchemy's greenlet bridge (ADR 0031). No database: the items are strings."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import exc
from sqlalchemy.util.concurrency import greenlet_spawn
from sqlalchemy.util.queue import Empty

from stallholder.kit.pools import FairQueue

pytestmark = pytest.mark.anyio


def _live_waiters(queue: FairQueue[str]) -> int:
    return sum(not waiter.done() for waiter in queue._waiters)


@pytest.mark.parametrize("seconds", [30.0, None])
@pytest.mark.parametrize("cancel_first", [False, True])
async def test_a_waiter_cancelled_in_the_turn_it_is_handed_an_item_raises_and_passes_it_on(
    seconds: float | None, cancel_first: bool
) -> None:
    queue: FairQueue[str] = FairQueue(maxsize=1)
    waiting = asyncio.create_task(greenlet_spawn(queue.get, True, seconds))
    await asyncio.sleep(0.01)

    if cancel_first:
        waiting.cancel()
        queue.put_nowait("connection")
    else:
        queue.put_nowait("connection")
        waiting.cancel()

    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (queue.qsize(), _live_waiters(queue)) == (1, 0)
    assert queue.get_nowait() == "connection"


async def test_a_waiter_whose_timeout_falls_in_the_turn_it_is_handed_an_item_keeps_none() -> None:
    queue: FairQueue[str] = FairQueue(maxsize=1)
    loop = asyncio.get_running_loop()
    waiting = asyncio.create_task(greenlet_spawn(queue.get, True, 0.05))
    await asyncio.sleep(0)
    # Block the loop past the timeout, so the item's handover and the timer fall due in
    # the same turn, the handover first.
    loop.call_later(0.02, time.sleep, 0.06)
    loop.call_later(0.045, queue.put_nowait, "connection")

    with pytest.raises(Empty):
        await waiting
    assert (queue.qsize(), _live_waiters(queue)) == (1, 0)


async def test_a_caller_outside_the_greenlet_bridge_leaves_no_waiter_behind() -> None:
    queue: FairQueue[str] = FairQueue(maxsize=1)

    with pytest.raises(exc.MissingGreenlet):
        queue.get(True, 1.0)

    queue.put_nowait("connection")
    assert (queue.qsize(), _live_waiters(queue)) == (1, 0)


async def test_waiters_are_served_first_come_first_served_and_the_queue_keeps_the_rest() -> None:
    queue: FairQueue[str] = FairQueue(maxsize=2)
    first = asyncio.create_task(greenlet_spawn(queue.get, True, None))
    await asyncio.sleep(0)
    second = asyncio.create_task(greenlet_spawn(queue.get, True, None))
    await asyncio.sleep(0)

    for item in ("a", "b", "c"):
        queue.put_nowait(item)

    assert (await first, await second) == ("a", "b")
    assert queue.get_nowait() == "c"
