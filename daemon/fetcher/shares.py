"""A shard's share of the job-wide per-host limits (``ShardSpec.host_shares``): at most so many
of its requests to a host in flight, spaced at its share of the host's rate.

The manager hands out the shares so that, over all the shards running at once, they add up to
no more than ``--per-host`` and ``--host-rps``. The pacing has no burst: the first request of a
shard waits one interval, and an idle host saves up one request at most, so K shards starting
together cannot send K bursts. Hosts without a share are not limited here (the process's own
limits, ``politeness``, still hold them).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from contextlib import AbstractAsyncContextManager

_UNLIMITED = contextlib.nullcontext()


class _Share:
    __slots__ = ("interval", "next_start", "semaphore")

    def __init__(self, slots: int, rate: float | None, now: float) -> None:
        self.semaphore = asyncio.Semaphore(slots)
        self.interval = 1.0 / rate if rate else 0.0
        self.next_start = now + self.interval

    def delay(self) -> float:
        """Book the next start; how long until it."""
        now = time.monotonic()
        start = max(self.next_start, now)
        self.next_start = start + self.interval
        return start - now


class _Slot:
    __slots__ = ("_share",)

    def __init__(self, share: _Share) -> None:
        self._share = share

    async def __aenter__(self) -> None:
        share = self._share
        await share.semaphore.acquire()
        try:
            wait = share.delay()
            if wait > 0:
                await asyncio.sleep(wait)
        except BaseException:
            share.semaphore.release()
            raise

    async def __aexit__(self, *_: object) -> None:
        self._share.semaphore.release()


class ShardShares:
    """The limits of one shard's downloads, built from its spec's ``host_shares``."""

    def __init__(self, shares: dict[str, tuple[int, float | None]]) -> None:
        now = time.monotonic()
        self._hosts = {host: _Share(slots, rate, now) for host, (slots, rate) in shares.items()}

    def slot(self, host: str) -> AbstractAsyncContextManager[None]:
        """``async with shares.slot(host):`` around one attempt: a request in flight, started
        no sooner than the host's pace allows. A no-op for a host without a share."""
        share = self._hosts.get(host)
        return _UNLIMITED if share is None else _Slot(share)


NO_SHARES = ShardShares({})
"""No share for any host: downloads outside a shard of a job (the prober, tests)."""
