"""Total timeouts kept by one periodic check (``Deadlines``), on a real uvloop event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from ldawt.daemon.fetcher.deadlines import CHECK_PERIOD_S, Deadlines


def on_uvloop(test: Callable[[], Awaitable[Any]]) -> Any:
    return uvloop.run(test())


async def limited(deadlines: Deadlines, seconds: float, work: Awaitable[Any]) -> Any:
    with deadlines.limit(seconds):
        return await work


def test_work_within_its_deadline_returns_its_result() -> None:
    async def scenario() -> tuple[str, int]:
        result = await limited(Deadlines(), 5.0, asyncio.sleep(0.01, result="done"))
        return result, asyncio.current_task().cancelling()

    assert on_uvloop(scenario) == ("done", 0)


def test_work_past_its_deadline_ends_with_timeout_error() -> None:
    async def scenario() -> tuple[str, float, int, int]:
        deadlines = Deadlines()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError) as caught:
            await limited(deadlines, 0.2, asyncio.sleep(30))
        # the task is usable afterwards: its cancellation was taken back
        await asyncio.sleep(0)
        after = await limited(deadlines, 5.0, asyncio.sleep(0, result=7))
        return str(caught.value), loop.time() - started, asyncio.current_task().cancelling(), after

    message, elapsed, cancelling, after = on_uvloop(scenario)
    assert message == "took longer than 0.2 s (--timeout)"
    assert 0.15 <= elapsed < 5.0  # the loop clock counts milliseconds; well before 30 s
    assert (cancelling, after) == (0, 7)


def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    async def scenario() -> tuple[bool, bool]:
        deadlines = Deadlines()
        work = asyncio.ensure_future(limited(deadlines, 30.0, asyncio.sleep(30)))
        await asyncio.sleep(0.05)
        work.cancel()
        with pytest.raises(asyncio.CancelledError):
            await work
        # both at once: the deadline passes while the task is being cancelled from elsewhere
        both = asyncio.ensure_future(limited(deadlines, 0.01, asyncio.sleep(30)))
        await asyncio.sleep(0.02)
        both.cancel()
        await asyncio.sleep(2 * CHECK_PERIOD_S)
        try:
            await both
        except asyncio.CancelledError:
            return True, not deadlines._running
        return False, not deadlines._running

    assert on_uvloop(scenario) == (True, True)


def test_a_late_request_that_ends_anyway_leaves_no_cancellation_behind() -> None:
    """Cancelled past its deadline, the work swallows the cancellation and returns."""

    async def stubborn() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return "finished anyway"
        return "slept"

    async def scenario() -> tuple[str, int]:
        result = await limited(Deadlines(), 0.05, stubborn())
        await asyncio.sleep(0.01)  # a cancellation still pending would land here
        return result, asyncio.current_task().cancelling()

    assert on_uvloop(scenario) == ("finished anyway", 0)


def test_a_task_that_once_swallowed_a_cancellation_still_times_out() -> None:
    """Its count of cancellation requests stays at 1; as with asyncio.timeout, the limit
    counts only its own."""

    async def scenario() -> tuple[int, str]:
        task = asyncio.current_task()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):  # swallowed without uncancel()
            await asyncio.sleep(1)
        before = task.cancelling()
        try:
            await limited(Deadlines(), 0.05, asyncio.sleep(30))
        except TimeoutError as exc:
            return before, str(exc)
        return before, "no timeout"

    assert on_uvloop(scenario) == (1, "took longer than 0.05 s (--timeout)")


def test_the_check_stops_when_no_work_is_left() -> None:
    async def scenario() -> tuple[bool, bool]:
        deadlines = Deadlines()
        task = asyncio.ensure_future(limited(deadlines, 30.0, asyncio.sleep(0.05)))
        await asyncio.sleep(0)
        armed = deadlines._timer is not None
        await task
        await asyncio.sleep(2 * CHECK_PERIOD_S)
        return armed, deadlines._timer is None

    assert on_uvloop(scenario) == (True, True)
