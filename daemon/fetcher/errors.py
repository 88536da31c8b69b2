"""The closed taxonomy of row outcomes, and how exceptions and HTTP statuses map onto it."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp

OK = "ok"
DUPLICATE = "duplicate"
REDIRECT_LOOP = "redirect_loop"
TIMEOUT = "timeout"
CONNECT_ERROR = "connect_error"
CONNECTION_RESET = "connection_reset"
DNS_ERROR = "dns_error"
TLS_ERROR = "tls_error"
TOO_LARGE = "too_large"
TRUNCATED = "truncated"
NOT_IMAGE = "not_image"
BAD_URL = "bad_url"
BLOCKED_ADDRESS = "blocked_address"
CANCELLED = "cancelled"
INTERNAL_ERROR = "internal_error"

_NAMED_HTTP = (400, 401, 403, 404, 410, 429, 500, 502, 503, 504)
HTTP_STATUSES = (*(f"http_{code}" for code in _NAMED_HTTP), "http_3xx", "http_4xx", "http_5xx")

FAILURES = (
    *HTTP_STATUSES,
    REDIRECT_LOOP,
    TIMEOUT,
    CONNECT_ERROR,
    CONNECTION_RESET,
    DNS_ERROR,
    TLS_ERROR,
    TOO_LARGE,
    TRUNCATED,
    NOT_IMAGE,
    BAD_URL,
    BLOCKED_ADDRESS,
    CANCELLED,
    INTERNAL_ERROR,
)
SUCCESSES = (OK, DUPLICATE)
"""Statuses of rows whose image is in a tar (a duplicate points at its original's member)."""
ALL_STATUSES = (*SUCCESSES, *FAILURES)

# Worth another attempt: the same request may well succeed later.
RETRYABLE = frozenset({TIMEOUT, CONNECT_ERROR, CONNECTION_RESET, TRUNCATED})
RETRYABLE_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504}) | frozenset(range(505, 600))


def http_status_code(status: int) -> str:
    """404 -> "http_404"; statuses without a name of their own fall into their class."""
    if status in _NAMED_HTTP:
        return f"http_{status}"
    return f"http_{status // 100}xx"


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
        return FetchFailure(BLOCKED_ADDRESS, str(cause or exc))
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return FetchFailure(DNS_ERROR, detail)
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return FetchFailure(TLS_ERROR, detail)
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return FetchFailure(TIMEOUT, detail)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return FetchFailure(TRUNCATED, detail)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return FetchFailure(CONNECT_ERROR, detail)
    if isinstance(exc, aiohttp.ServerDisconnectedError | ConnectionResetError):
        return FetchFailure(CONNECTION_RESET, detail)
    if isinstance(exc, aiohttp.InvalidURL | ValueError):
        return FetchFailure(BAD_URL, detail)
    if isinstance(exc, aiohttp.ClientOSError | aiohttp.ClientConnectionError | OSError):
        return FetchFailure(CONNECTION_RESET, detail)
    return FetchFailure(INTERNAL_ERROR, detail)
