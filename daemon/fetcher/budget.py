"""A bound on image bytes held in memory between download and write (backpressure)."""

from __future__ import annotations

import asyncio

from .. import metrics


class ByteBudget:
    """Requests reserve their body size before reading it, and the packer gives it back once
    the bytes are in the tar. A reservation waits while the budget is full, except when nothing
    is reserved at all, so a single body larger than the budget still goes through.

    Bodies of unknown length are charged as they arrive (``charge``) without waiting; the
    budget then runs over until they are written, and new reservations wait meanwhile.
    Every method must run on the event loop's thread.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._changed = asyncio.Condition()

    async def reserve(self, size: int) -> None:
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.used == 0 or self.used + size <= self.capacity
            )
            self.charge(size)

    def charge(self, size: int) -> None:
        self.used += size
        metrics.BUFFERED_BYTES.set(self.used)

    def release(self, size: int) -> None:
        self.used -= size
        metrics.BUFFERED_BYTES.set(self.used)
        asyncio.get_running_loop().create_task(self._wake())

    async def _wake(self) -> None:
        async with self._changed:
            self._changed.notify_all()
