"""A shard's share of the job-wide per-host limits (``ShardSpec.host_shares``): at most so many
of its requests to a host in flight, sent only on its instants of the host's common schedule.

The manager hands out the shares so that, over all the shards running at once, they add up to
no more than ``--per-host`` and ``--host-rps``. The rate needs no agreement between shards at
run time: the host's schedule is the wall-clock instants ``k / host_rps``, instant ``k`` belongs
to unit ``k % capacity`` (``contract.HostShare``), and each unit is one running shard's. So
shards that start together do not fire together: however many there are, the host gets one
request per instant at most. An idle shard saves nothing up: instants that passed are gone.
What the clocks of different machines disagree by moves their instants that much; hence the
10% slack the limits are checked with. Hosts without a share are not limited here (the
process's own limits, ``politeness``, still hold them).

``slot`` holds one of the shard's units for an attempt; ``pace`` waits for the shard's next
instant, and is awaited right before the request goes out (after the process's own host and
request slots are held), so requests held back by a pause or a lowered limit still leave one
instant apart when it lifts.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import time
from contextlib import AbstractAsyncContextManager

from ..contract import HostShare

_UNLIMITED = contextlib.nullcontext()


class _Share:
    __slots__ = ("capacity", "next_instant", "rps", "semaphore", "units")

    def __init__(self, share: HostShare) -> None:
        self.semaphore = asyncio.Semaphore(len(share.units))
        self.units = sorted(share.units)
        self.capacity = share.capacity
        self.rps = share.host_rps
        self.next_instant = 0
        """The first instant not booked yet."""

    def delay(self) -> float:
        """Book the shard's next instant of the host's schedule; how long until it."""
        if not self.rps:
            return 0.0
        now = time.time()
        first = max(self.next_instant, math.ceil(now * self.rps))
        cycle, position = divmod(first, self.capacity)
        index = bisect.bisect_left(self.units, position)
        if index == len(self.units):
            cycle, index = cycle + 1, 0
        instant = cycle * self.capacity + self.units[index]
        self.next_instant = instant + 1
        return instant / self.rps - now


class ShardShares:
    """The limits of one shard's downloads, built from its spec's ``host_shares``; hosts are
    spelled as yarl's ``URL.raw_host``."""

    def __init__(self, shares: dict[str, HostShare]) -> None:
        self._hosts = {host: _Share(share) for host, share in shares.items()}

    def slot(self, host: str) -> AbstractAsyncContextManager[object]:
        """``async with shares.slot(host):`` around one attempt: one of the shard's units of
        the host. A no-op for a host without a share."""
        share = self._hosts.get(host)
        return _UNLIMITED if share is None else share.semaphore

    async def pace(self, host: str) -> None:
        """Wait for the shard's next instant of the host's schedule (none without a share)."""
        share = self._hosts.get(host)
        if share is not None:
            wait = share.delay()
            if wait > 0:
                await asyncio.sleep(wait)


NO_SHARES = ShardShares({})
"""No share for any host: downloads outside a shard of a job (the prober, tests)."""
