"""How a failed download maps onto the closed set of row statuses (``contract.Status``), and
which failures are worth another attempt."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp

from ..contract import Status

# Worth another attempt: the same request may well succeed later.
RETRYABLE = frozenset(
    {Status.TIMEOUT, Status.CONNECT_ERROR, Status.CONNECTION_RESET, Status.TRUNCATED}
)
RETRYABLE_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504}) | frozenset(range(505, 600))


class FetchFailure(Exception):
    """A row's download failed with one of the taxonomy's statuses."""

    def __init__(self, status: str, detail: str, http_status: int | None = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.http_status = http_status
        self.retry_after: float | None = None


class BlockedAddressError(OSError):
    """Raised by the resolver when a host resolves only to forbidden addresses."""


def classify_exception(exc: BaseException) -> FetchFailure:
    """Map a client-side exception onto the taxonomy, keeping its text as the detail."""
    if isinstance(exc, FetchFailure):
        return exc
    detail = f"{type(exc).__name__}: {exc}"[:500]
    cause = getattr(exc, "os_error", None) or exc.__cause__
    if isinstance(cause, BlockedAddressError) or isinstance(exc, BlockedAddressError):
        return FetchFailure(Status.BLOCKED_ADDRESS, str(cause or exc))
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return FetchFailure(Status.DNS_ERROR, detail)
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return FetchFailure(Status.TLS_ERROR, detail)
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return FetchFailure(Status.TIMEOUT, detail)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return FetchFailure(Status.TRUNCATED, detail)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return FetchFailure(Status.CONNECT_ERROR, detail)
    if isinstance(exc, aiohttp.ServerDisconnectedError | ConnectionResetError):
        return FetchFailure(Status.CONNECTION_RESET, detail)
    if isinstance(exc, aiohttp.InvalidURL | ValueError):
        return FetchFailure(Status.BAD_URL, detail)
    if isinstance(exc, aiohttp.ClientOSError | aiohttp.ClientConnectionError | OSError):
        return FetchFailure(Status.CONNECTION_RESET, detail)
    return FetchFailure(Status.INTERNAL_ERROR, detail)
