"""The daemon's one warm aiohttp session: keep-alive pool, DNS cache, address guard."""

from __future__ import annotations

import contextvars
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp

from .. import metrics
from .dns import CachingResolver
from .dnsshare import SocketResolver
from .guard import GuardedResolver
from .options import FetchOptions


class ConnectionUse:
    """New connections opened for the request under way in this task."""

    __slots__ = ("new",)

    def __init__(self) -> None:
        self.new = 0


IDLE_HEADROOM_DIVISOR = 4
"""Idle connections kept beyond ``--concurrency``: a quarter of it. One process of the
many-host profile (bench/RESULTS.md, 20,000 rows, 256 in flight) peaked at 285 MB with none
and opened 15,900 connections; 305-316 MB and 10,600-11,200 with a quarter; 409 MB and 7,100
with as many as ``--concurrency`` (unbounded: 1.3 GB and 900)."""

UNCOUNTED = ConnectionUse()
"""The use of requests that are not a row's (robots.txt): their connections are not counted in
``ldawt_connections``, which the manifest's ``connections_new`` add up to."""

CURRENT_USE: contextvars.ContextVar[ConnectionUse | None] = contextvars.ContextVar(
    "ldawt_connection_use", default=None
)


class CountingConnector(aiohttp.TCPConnector):
    """Counts the connections it opens; every other request used a warm one. Cheaper than
    aiohttp's tracing, which sends about ten signals per request once any is configured.

    It also bounds the idle pool. aiohttp's ``limit`` counts connections in use only, so idle
    keep-alive connections to hosts already done stayed open for ``keepalive_timeout``, each
    TLS one with its 256 KiB read buffer and OpenSSL state: one process held 1.35 GB over
    2,000 hosts (bench/RESULTS.md). Before a connection is opened, idle ones are closed until
    in use + idle <= ``limit`` + ``idle_headroom``: first those of hosts no request holds or
    awaits a slot of (``host_in_use``), least recently released first, then the others. A host
    with requests under way (a heavy host, or a row waiting for a global slot after its
    host's robots.txt) keeps its connections; one-row hosts already done lose theirs.

    aiohttp has no public setting for this; this relies on ``BaseConnector._conns`` (key ->
    (protocol, release time) pairs, oldest first) and ``_acquired`` (connections in use, the
    one being opened included) as they are in aiohttp 3.14; tests/test_idle_pool.py fails if
    they change.
    """

    def __init__(
        self, *, idle_headroom: int, host_in_use: Callable[[str], bool], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._idle_headroom = idle_headroom
        self._host_in_use = host_in_use

    async def _create_connection(self, *args: Any, **kwargs: Any) -> Any:
        self._close_least_recent_idle()
        protocol = await super()._create_connection(*args, **kwargs)
        use = CURRENT_USE.get()
        if use is UNCOUNTED:
            return protocol
        metrics.NEW_CONNECTIONS.inc()
        if use is not None:
            use.new += 1
        return protocol

    def _close_least_recent_idle(self) -> None:
        idle = sum(len(conns) for conns in self._conns.values())
        for _ in range(len(self._acquired) + idle - self.limit - self._idle_headroom):
            key = min(
                (k for k, c in self._conns.items() if c),
                key=lambda k: (self._host_in_use(k.host), self._conns[k][0][1]),
            )
            conns = self._conns[key]
            protocol, _ = conns[0]
            del conns[0]
            if not conns:
                del self._conns[key]
            protocol.close()


def _ssl_setting(options: FetchOptions) -> ssl.SSLContext | bool:
    if not options.tls_verify:
        return False
    if options.ca_file:
        return ssl.create_default_context(cafile=options.ca_file)
    return True


def _shared_dns(options: FetchOptions) -> SocketResolver | None:
    """The local engine's shared DNS cache as the process cache's source, when there is one."""
    return SocketResolver(options.dns_socket) if options.dns_socket else None


def open_session(
    options: FetchOptions, host_in_use: Callable[[str], bool]
) -> aiohttp.ClientSession:
    """Create the pooled session; call on the event loop that will use it. ``host_in_use``
    tells which hosts' idle connections to keep longest."""
    connector = CountingConnector(
        limit=options.concurrency,
        limit_per_host=options.per_host,
        use_dns_cache=False,  # the resolver caches, failures included (fetcher/dns.py)
        keepalive_timeout=30,
        idle_headroom=options.concurrency // IDLE_HEADROOM_DIVISOR,
        host_in_use=host_in_use,
        resolver=GuardedResolver(options.allow_private, CachingResolver(_shared_dns(options))),
        ssl=_ssl_setting(options),
    )
    return aiohttp.ClientSession(
        connector=connector,
        headers={"User-Agent": options.agent_header, "Accept": "image/*,*/*;q=0.8"},
        # Timeouts are set per request from the options of the shard at hand.
        timeout=aiohttp.ClientTimeout(total=None),
        # No cookies kept, as img2dataset (a fresh urllib request per URL): a long-lived daemon's
        # jar would grow with every host that sets one and be consulted on every request.
        cookie_jar=aiohttp.DummyCookieJar(),
        raise_for_status=False,
    )
