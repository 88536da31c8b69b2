"""Per-host politeness: a cap on requests in flight per host and an optional token bucket."""

from __future__ import annotations

import asyncio
import time

from .. import metrics


class _TokenBucket:
    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._stamp = time.monotonic()

    def delay(self) -> float:
        """Take a token; return how long the caller must wait before using it."""
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate


class _Host:
    __slots__ = ("bucket", "semaphore", "users")

    def __init__(self, per_host: int, rps: float | None) -> None:
        self.semaphore = asyncio.Semaphore(per_host)
        self.bucket = _TokenBucket(rps) if rps else None
        self.users = 0


class HostLimiter:
    """Hands out per-host slots. State for a host exists only while someone uses or awaits it,
    so memory does not grow with the number of distinct hosts in a job."""

    def __init__(
        self, per_host: int, rps: float | None, host_labels: metrics.BoundedHostLabels
    ) -> None:
        self._per_host = per_host
        self._rps = rps
        self._host_labels = host_labels
        self._hosts: dict[str, _Host] = {}

    def slot(self, host: str) -> _Slot:
        """``async with limiter.slot(host):`` holds one of the host's slots."""
        return _Slot(self, host)

    async def _acquire(self, host: str) -> _Host:
        state = self._hosts.get(host)
        if state is None:
            state = self._hosts[host] = _Host(self._per_host, self._rps)
        state.users += 1
        started = time.monotonic()
        try:
            await state.semaphore.acquire()
        except BaseException:
            self._leave(host, state)
            raise
        wait = state.bucket.delay() if state.bucket else 0.0
        if wait > 0:
            try:
                await asyncio.sleep(wait)
            except BaseException:
                self._release(host, state)
                raise
        waited = time.monotonic() - started
        if waited > 0.001:
            metrics.HOST_WAIT.labels(self._host_labels(host)).inc(waited)
        return state

    def _release(self, host: str, state: _Host) -> None:
        state.semaphore.release()
        self._leave(host, state)

    def _leave(self, host: str, state: _Host) -> None:
        state.users -= 1
        if state.users == 0:
            del self._hosts[host]


class _Slot:
    """A class-based context manager: cheaper per request than a generator-based one."""

    __slots__ = ("_host", "_limiter", "_state")

    def __init__(self, limiter: HostLimiter, host: str) -> None:
        self._limiter = limiter
        self._host = host
        self._state: _Host | None = None

    async def __aenter__(self) -> None:
        self._state = await self._limiter._acquire(self._host)

    async def __aexit__(self, *_: object) -> None:
        assert self._state is not None
        self._limiter._release(self._host, self._state)
