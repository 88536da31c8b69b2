"""A bound on image bytes held in memory between download and write (backpressure)."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque

from .. import metrics


class ByteBudget:
    """Requests reserve their body size before reading it, and the tar writer gives it back once
    the bytes are in the tar. A reservation waits while the budget is full, except when nothing
    is reserved at all, so a single body larger than the budget still goes through.

    Bodies of unknown length are charged as they arrive (``charge``) without waiting; the
    budget then runs over until they are written, and new reservations wait meanwhile.
    ``reserve`` and ``charge`` run on the event loop; ``release`` runs on any thread (the tar
    writer's) and wakes the loop only when a reservation is waiting.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._lock = threading.Lock()
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()
        with _budgets_lock:
            _budgets.add(self)

    async def reserve(self, size: int) -> None:
        with self._lock:
            if not self._waiting and self._fits(size):
                self._add(size)
                return
            granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (size, granted)
            self._waiting.append(entry)
        try:
            await granted
        except asyncio.CancelledError:
            with self._lock:
                still_waiting = entry in self._waiting
                if still_waiting:
                    self._waiting.remove(entry)
            if not still_waiting:  # granted (and charged) just as the wait was cancelled
                self.release(size)
            raise

    def charge(self, size: int) -> None:
        with self._lock:
            self._add(size)

    def release(self, size: int) -> None:
        granted = []
        with self._lock:
            self._add(-size)
            while self._waiting and self._fits(self._waiting[0][0]):
                need, future = self._waiting.popleft()
                self._add(need)
                granted.append(future)
        for future in granted:
            future.get_loop().call_soon_threadsafe(_grant, future)

    def _fits(self, size: int) -> bool:
        return self.used == 0 or self.used + size <= self.capacity

    def _add(self, size: int) -> None:
        self.used += size


_budgets: weakref.WeakSet[ByteBudget] = weakref.WeakSet()
_budgets_lock = threading.Lock()


def _buffered_bytes() -> float:
    """What every budget of this process holds (one per pool of options), read when scraped
    rather than set at each reservation and release."""
    with _budgets_lock:
        return float(sum(budget.used for budget in _budgets))


metrics.BUFFERED_BYTES.set_function(_buffered_bytes)


def _grant(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
