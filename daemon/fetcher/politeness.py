"""Per-host politeness: a cap on requests in flight per host and an optional token bucket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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

    def __init__(self, per_host: int, rps: float | None, labeler: metrics.HostLabeler) -> None:
        self._per_host = per_host
        self._rps = rps
        self._labeler = labeler
        self._hosts: dict[str, _Host] = {}

    @asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        state = self._hosts.get(host)
        if state is None:
            state = self._hosts[host] = _Host(self._per_host, self._rps)
        state.users += 1
        try:
            started = time.monotonic()
            async with state.semaphore:
                wait = state.bucket.delay() if state.bucket else 0.0
                if wait > 0:
                    await asyncio.sleep(wait)
                waited = time.monotonic() - started
                if waited > 0.001:
                    metrics.HOST_WAIT.labels(self._labeler(host)).inc(waited)
                yield
        finally:
            state.users -= 1
            if state.users == 0:
                del self._hosts[host]

    def tracked_hosts(self) -> int:
        return len(self._hosts)
