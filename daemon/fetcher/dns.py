"""The daemon's DNS cache: one lookup per host for a whole job, failures included.

aiohttp's connector cache forgets an answer after ``ttl_dns_cache`` seconds and never keeps a
failure, so a dead host with a thousand rows would cost a thousand lookups. This cache keeps
answers for ``POSITIVE_TTL_S``, "no such name" for ``NEGATIVE_TTL_S`` and other failures (a
timed-out or refused lookup) for ``TRANSIENT_TTL_S``, and lets concurrent lookups of one name
share a single query.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import OrderedDict
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

POSITIVE_TTL_S = 3600.0
"""Long enough for a job's rows of one host: getaddrinfo tells no record TTL, and a CDN's
former address keeps serving well past a short TTL."""
NEGATIVE_TTL_S = 600.0
"""For names that do not exist (NXDOMAIN / no address): they rarely appear mid-job."""
TRANSIENT_TTL_S = 10.0
"""For other failures (timeout, SERVFAIL): a burst of rows shares one, later rows try again."""
MAX_ENTRIES = 200_000

NO_SUCH_NAME = frozenset(
    code
    for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
    if code is not None
)

Key = tuple[str, int, int]


class CachingResolver(AbstractResolver):
    """Caches ``inner``'s answers and failures per (host, port, family); coalesces lookups."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        # getaddrinfo in threads: it honours /etc/hosts, nsswitch and resolv.conf's options,
        # and aiohttp's own default switches to c-ares whenever aiodns happens to be installed.
        self._inner = inner or ThreadedResolver()
        self._cache: OrderedDict[Key, tuple[float, list[ResolveResult] | OSError]] = OrderedDict()
        self._pending: dict[Key, asyncio.Task[list[ResolveResult] | OSError]] = {}

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        key = (host, port, int(family))
        entry = self._cache.get(key)
        if entry is not None and entry[0] > time.monotonic():
            return _answer(entry[1])
        task = self._pending.get(key)
        if task is None:
            task = asyncio.ensure_future(self._lookup(key, host, port, family))
            self._pending[key] = task
            task.add_done_callback(lambda _: self._pending.pop(key, None))
        # shielded: a cancelled row must not cancel the lookup other rows wait for
        return _answer(await asyncio.shield(task))

    async def _lookup(
        self, key: Key, host: str, port: int, family: socket.AddressFamily
    ) -> list[ResolveResult] | OSError:
        try:
            result: list[ResolveResult] | OSError = await self._inner.resolve(host, port, family)
            ttl = POSITIVE_TTL_S
        except OSError as exc:
            result = exc
            ttl = NEGATIVE_TTL_S if _no_such_name(exc) else TRANSIENT_TTL_S
        self._cache[key] = (time.monotonic() + ttl, result)
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_ENTRIES:
            self._cache.popitem(last=False)
        return result

    async def close(self) -> None:
        for task in list(self._pending.values()):
            task.cancel()
        await self._inner.close()


def _no_such_name(exc: OSError) -> bool:
    return isinstance(exc, socket.gaierror) and exc.errno in NO_SUCH_NAME


def _answer(result: list[ResolveResult] | OSError) -> list[ResolveResult]:
    if isinstance(result, OSError):
        raise _copy(result)
    return result


def _copy(exc: OSError) -> OSError:
    """A fresh exception per row: a shared one would pile every row's traceback onto it."""
    args: Any = exc.args
    return type(exc)(*args)
