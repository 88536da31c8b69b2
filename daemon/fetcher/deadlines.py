"""Total timeouts of the requests under way, kept by one timer per fetcher.

``asyncio.timeout`` arms and cancels a timer of its own for every request and builds an
asynchronous context manager around it, about 7 us of the event loop's time per request
(bench/RESULTS.md); a request's total timeout is a coarse limit (120 s by default), so one
periodic check of every deadline does the same for a fraction of that. A request ends with
``TimeoutError`` at most ``CHECK_PERIOD_S`` after its deadline.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

CHECK_PERIOD_S = 0.1


class Deadlines:
    """Time limits for the tasks of one event loop, as ``asyncio.timeout`` would set them: past
    its deadline the task is cancelled, and the cancellation leaves the ``with`` block as
    ``TimeoutError``, while a cancellation from elsewhere stays a cancellation. Create it on
    the loop that uses it."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._running: set[Deadline] = set()
        self._timer: asyncio.TimerHandle | None = None

    def limit(self, seconds: float) -> Deadline:
        """``with deadlines.limit(seconds):`` around the awaits to limit, in a task."""
        return Deadline(self, seconds)

    def _add(self, deadline: Deadline) -> None:
        self._running.add(deadline)
        if self._timer is None:
            self._timer = self._loop.call_later(CHECK_PERIOD_S, self._check)

    def _discard(self, deadline: Deadline) -> None:
        self._running.discard(deadline)

    def _check(self) -> None:
        try:
            now = self._loop.time()
            for deadline in tuple(self._running):
                if not deadline.expired and deadline.at <= now:
                    deadline.expired = True
                    deadline.task.cancel()
        finally:  # whatever happened, the check goes on while limits run
            self._timer = (
                self._loop.call_later(CHECK_PERIOD_S, self._check) if self._running else None
            )


class Deadline:
    """One limit (see ``Deadlines.limit``) for the task that enters it; not reusable."""

    __slots__ = ("_cancelling", "_deadlines", "at", "expired", "seconds", "task")

    def __init__(self, deadlines: Deadlines, seconds: float) -> None:
        self._deadlines = deadlines
        self.seconds = seconds
        self.at = 0.0
        self.expired = False

    def __enter__(self) -> Deadline:
        task = asyncio.current_task(self._deadlines._loop)
        if task is None:
            raise RuntimeError("a Deadline must be entered in a task of its loop")
        self.task = task
        # cancellations already requested are not this limit's (as asyncio.timeout counts)
        self._cancelling = task.cancelling()
        self.at = self._deadlines._loop.time() + self.seconds
        self._deadlines._add(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._deadlines._discard(self)
        if self.expired:  # its cancellation is taken back here, delivered or not
            self.expired = False
            if self.task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError(f"took longer than {self.seconds:g} s (--timeout)") from None
