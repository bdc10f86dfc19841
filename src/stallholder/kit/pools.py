"""A connection pool that serves the waiting in the order they came (ADR 0031).

SQLAlchemy's asyncio pool keeps its idle connections in an ``asyncio.Queue`` and takes one
without waiting whenever one is there. A connection returned while others wait is put in
the queue and the first waiter is woken, but before it runs, any request that arrives
takes the connection; the waiter finds the queue empty and waits again, now behind the
newcomer. Under a drop storm (200 buyers, 30 connections) half the requests got a
connection at once and one in a hundred waited ten seconds or more.

``FairQueuePool`` is the same pool with a queue that never lets a newcomer pass a waiter:
a returned connection goes straight to the longest waiting request, and a request takes
an idle connection only when nobody waits (which is whenever one is idle: a connection is
only ever left idle when nobody waits for it).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TypeVar

from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry
from sqlalchemy.util.concurrency import await_
from sqlalchemy.util.queue import Empty, Full, QueueCommon

T = TypeVar("T")


class FairQueue(QueueCommon[T]):
    """First come, first served: a put hands the item to the longest waiting get."""

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        self.maxsize = maxsize
        self.use_lifo = use_lifo
        self._items: deque[T] = deque()
        self._waiters: deque[asyncio.Future[T]] = deque()

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self._items)

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, item: T) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a waiter that timed out or was cancelled is skipped
                waiter.set_result(item)
                return
        if self.full():
            raise Full()
        self._items.append(item)

    def put(self, item: T, block: bool = True, timeout: float | None = None) -> None:
        # The pool never returns more connections than it holds, so a put never waits.
        self.put_nowait(item)

    def get_nowait(self) -> T:
        if not self._items:
            raise Empty()
        return self._items.pop() if self.use_lifo else self._items.popleft()

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        if self._items or not block:
            return self.get_nowait()
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        waiting = _wait(waiter, timeout)
        try:
            return await_(waiting)
        except BaseException as error:
            waiting.close()  # never started when the caller is not in a greenlet
            self._give_up(waiter)
            if isinstance(error, TimeoutError):
                raise Empty() from error
            raise

    def _give_up(self, waiter: asyncio.Future[T]) -> None:
        """A waiter that stops waiting (its timeout, its task cancelled, or any error)
        either was never served, and is cancelled so no put serves it, or was handed an
        item in the same turn of the event loop, and passes it on: none is lost."""
        if not waiter.done():
            waiter.cancel()
        elif not waiter.cancelled():
            item = waiter.result()
            try:
                self.put_nowait(item)
            except Full:
                # Only when the queue refilled meanwhile: keep the item idle rather than
                # lose it (one over ``maxsize``; the pool closes the next one returned).
                self._items.append(item)


async def _wait(waiter: asyncio.Future[T], seconds: float | None) -> T:
    """The waiter's item; ``TimeoutError`` after ``seconds`` (None: no limit). A
    cancellation or timeout that arrives in the turn the item does is raised, not
    swallowed (as ``asyncio.wait_for`` does on Python 3.11): ``FairQueue.get`` passes the
    item on."""
    if seconds is None:
        return await waiter
    async with asyncio.timeout(seconds):
        return await waiter


class FairQueuePool(AsyncAdaptedQueuePool):
    """SQLAlchemy's asyncio ``QueuePool`` that serves waiting requests in order."""

    _queue_class = FairQueue[ConnectionPoolEntry]
