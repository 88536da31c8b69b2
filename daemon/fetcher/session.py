"""The daemon's one warm aiohttp session: keep-alive pool, DNS cache, address guard, tracing."""

from __future__ import annotations

import ssl
from types import SimpleNamespace
from typing import Any

import aiohttp

from .. import metrics
from .guard import GuardedResolver
from .options import FetchOptions


class ConnectionUse:
    """Per-request record of whether the request opened a connection or reused a warm one."""

    __slots__ = ("new", "reused")

    def __init__(self) -> None:
        self.new = 0
        self.reused = 0


async def _on_connection_created(_: Any, context: SimpleNamespace, __: Any) -> None:
    metrics.CONNECTIONS.labels("new").inc()
    if isinstance(context.trace_request_ctx, ConnectionUse):
        context.trace_request_ctx.new += 1


async def _on_connection_reused(_: Any, context: SimpleNamespace, __: Any) -> None:
    metrics.CONNECTIONS.labels("reused").inc()
    if isinstance(context.trace_request_ctx, ConnectionUse):
        context.trace_request_ctx.reused += 1


def _ssl_setting(options: FetchOptions) -> ssl.SSLContext | bool:
    if not options.tls_verify:
        return False
    if options.ca_file:
        return ssl.create_default_context(cafile=options.ca_file)
    return True


def open_session(options: FetchOptions) -> aiohttp.ClientSession:
    """Create the pooled session; call on the event loop that will use it."""
    tracing = aiohttp.TraceConfig()
    tracing.on_connection_create_end.append(_on_connection_created)
    tracing.on_connection_reuseconn.append(_on_connection_reused)
    connector = aiohttp.TCPConnector(
        limit=options.concurrency,
        limit_per_host=options.per_host,
        ttl_dns_cache=300,
        keepalive_timeout=30,
        resolver=GuardedResolver(options.allow_private),
        ssl=_ssl_setting(options),
    )
    return aiohttp.ClientSession(
        connector=connector,
        trace_configs=[tracing],
        headers={"User-Agent": options.user_agent, "Accept": "image/*,*/*;q=0.8"},
        # Timeouts are set per request from the options of the shard at hand.
        timeout=aiohttp.ClientTimeout(total=None),
        raise_for_status=False,
    )
