"""The daemon's one warm aiohttp session: keep-alive pool, DNS cache, address guard."""

from __future__ import annotations

import contextvars
import ssl
from typing import Any

import aiohttp

from .. import metrics
from .guard import GuardedResolver
from .options import FetchOptions


class ConnectionUse:
    """New connections opened for the request under way in this task."""

    __slots__ = ("new",)

    def __init__(self) -> None:
        self.new = 0


UNCOUNTED = ConnectionUse()
"""The use of requests that are not a row's (robots.txt): their connections are not counted in
``ldawt_connections``, which the manifest's ``connections_new`` add up to."""

CURRENT_USE: contextvars.ContextVar[ConnectionUse | None] = contextvars.ContextVar(
    "ldawt_connection_use", default=None
)


class CountingConnector(aiohttp.TCPConnector):
    """Counts the connections it opens; every other request used a warm one. Cheaper than
    aiohttp's tracing, which sends about ten signals per request once any is configured."""

    async def _create_connection(self, *args: Any, **kwargs: Any) -> Any:
        protocol = await super()._create_connection(*args, **kwargs)
        use = CURRENT_USE.get()
        if use is UNCOUNTED:
            return protocol
        metrics.NEW_CONNECTIONS.inc()
        if use is not None:
            use.new += 1
        return protocol


def _ssl_setting(options: FetchOptions) -> ssl.SSLContext | bool:
    if not options.tls_verify:
        return False
    if options.ca_file:
        return ssl.create_default_context(cafile=options.ca_file)
    return True


def open_session(options: FetchOptions) -> aiohttp.ClientSession:
    """Create the pooled session; call on the event loop that will use it."""
    connector = CountingConnector(
        limit=options.concurrency,
        limit_per_host=options.per_host,
        use_dns_cache=False,  # the resolver caches, failures included (fetcher/dns.py)
        keepalive_timeout=30,
        resolver=GuardedResolver(options.allow_private),
        ssl=_ssl_setting(options),
    )
    return aiohttp.ClientSession(
        connector=connector,
        headers={"User-Agent": options.agent_header, "Accept": "image/*,*/*;q=0.8"},
        # Timeouts are set per request from the options of the shard at hand.
        timeout=aiohttp.ClientTimeout(total=None),
        raise_for_status=False,
    )
