"""A shard's share of the job-wide per-host limits in the daemon (``fetcher.shares``): shards
admitted together keep to the host's rate as a whole, and requests held back by the process's
own limits are paced when they leave, not before."""

from __future__ import annotations

import asyncio
import time

from fault_origin import FaultOrigin, most_in_window
from fleet_caps import recording_origin

from ldawt.daemon.contract import FetchOptions, HostShare, ShardSpec
from ldawt.daemon.fetcher.fetch import Fetcher
from ldawt.daemon.fetcher.shares import ShardShares
from ldawt.manager.hostcaps import HostShares

SLACK = 1.1  # clock effects, as the issue allows


def test_shards_admitted_together_keep_to_the_host_rate() -> None:
    """32 shards of 2 rows of one host, admitted at once under --host-rps 20: each gets 2 of
    the host's 64 units and a rate of 0.625/s; paced from their own starts they would all fire
    together, on the common schedule they take turns."""
    rps = 20.0
    rows = {f"s{i}": {"big": 2} for i in range(32)}
    manager = HostShares(rows, per_host=128, host_rps=rps)
    specs = [manager.admit(ShardSpec(shard_id=s, input_path="-", output_dir="-"), 32) for s in rows]
    assert all(spec is not None for spec in specs)
    sent: list[float] = []

    async def shard(shares: ShardShares) -> None:
        async def request() -> None:
            async with shares.slot("big"):
                await shares.pace("big")
                sent.append(time.time())

        await asyncio.gather(*(request() for _ in range(2)))

    async def run_all() -> None:
        await asyncio.gather(*(shard(ShardShares(spec.host_shares)) for spec in specs))

    asyncio.run(asyncio.wait_for(run_all(), 30))
    assert len(sent) == 64
    assert most_in_window(sent, 1.0) <= rps * SLACK + 1


def test_requests_held_by_a_pause_leave_at_the_shares_pace() -> None:
    """A 429 with Retry-After 2 pauses the host in the process while the shard's other
    requests queue: when the pause ends they go out at the share's 4/s, not all at once."""
    rps = 4.0
    fetcher_options = FetchOptions(allow_private=True, robots="ignore", retries=1)
    share = HostShare(units=(0, 1, 2, 3), capacity=4, host_rps=rps)

    async def run(fault_origin: FaultOrigin, base: str) -> list[str]:
        fetcher = Fetcher(fetcher_options)
        shares = ShardShares({"127.0.0.1": share})
        try:
            first = asyncio.create_task(
                fetcher.fetch(f"{base}/retry-after/seconds/p0.jpg?delay=2", shares=shares)
            )
            while not fault_origin.hits:  # the 429 is on its way: the host pauses
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            rest = [fetcher.fetch(f"{base}/img/q{i}.jpg", shares=shares) for i in range(8)]
            done = await asyncio.gather(first, *rest)
            return [download.status for download in done]
        finally:
            await fetcher.close()

    with recording_origin() as (fault_origin, base):
        assert asyncio.run(asyncio.wait_for(run(fault_origin, base), 30)) == ["ok"] * 9
    assert sum(fault_origin.hits.values()) == 10  # the 429, its retry and the 8 queued
    assert fault_origin.max_in_window(1.0) <= rps * SLACK + 1
