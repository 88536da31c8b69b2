"""What the hosts of one shard's requests pushed back with: 429/503 answers, the host-wide
pauses and the limit halvings they caused (``politeness.HostLimiter`` counts them into the log of
the shard whose request it was, found through ``CURRENT_LOG``)."""

from __future__ import annotations

import contextvars
from typing import TypedDict, TypeGuard

TOP_HOSTS = 20
"""A shard's stats name at most this many hosts (those that pushed back most)."""


class ThrottledHost(TypedDict):
    host: str
    throttled: int
    """HTTP 429 and 503 answers."""
    pauses: int
    """Host-wide pauses their Retry-After started."""
    halvings: int
    """Times its concurrency limit was halved (429/503 without Retry-After, or a run of
    timeouts and resets)."""


THROTTLE_KINDS = ("throttled", "pauses", "halvings")


class ThrottleLog:
    """Counts by host: one shard's, or (``add``) a job's from its shards' ``top``."""

    def __init__(self) -> None:
        self._hosts: dict[str, dict[str, int]] = {}

    def count(self, host: str, kind: str, times: int = 1) -> None:
        counts = self._hosts.get(host)
        if counts is None:
            counts = self._hosts[host] = dict.fromkeys(THROTTLE_KINDS, 0)
        counts[kind] += times

    def add(self, item: object) -> bool:
        """Count a ``ThrottledHost`` read back from a stats file; False, counting nothing, when
        ``item`` is not one (a file written by another ldawt version)."""
        if not _is_throttled_host(item):
            return False
        for kind in THROTTLE_KINDS:
            self.count(item["host"], kind, item[kind])
        return True

    def top(self, most: int = TOP_HOSTS) -> list[ThrottledHost]:
        """The ``most`` hosts with the most events, most first."""
        ranked = sorted(self._hosts.items(), key=lambda item: (-sum(item[1].values()), item[0]))
        return [
            ThrottledHost(
                host=host,
                throttled=counts["throttled"],
                pauses=counts["pauses"],
                halvings=counts["halvings"],
            )
            for host, counts in ranked[:most]
        ]


def _is_throttled_host(item: object) -> TypeGuard[ThrottledHost]:
    return (
        isinstance(item, dict)
        and isinstance(item.get("host"), str)
        and all(type(item.get(kind)) is int and item[kind] >= 0 for kind in THROTTLE_KINDS)
    )


CURRENT_LOG: contextvars.ContextVar[ThrottleLog | None] = contextvars.ContextVar(
    "ldawt_throttle_log", default=None
)
"""The log of the shard whose rows the current task downloads (None outside a shard)."""
