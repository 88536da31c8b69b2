"""Download one URL: validation, redirects, politeness, retries, streaming limits, sniffing."""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass

import aiohttp
from protego import Protego
from yarl import URL

from .. import metrics
from ..contract import Status, status_for_http
from . import errors
from .budget import ByteBudget
from .deadlines import Deadlines
from .errors import FetchFailure
from .guard import host_refusal
from .options import AGENT_TOKEN, FetchOptions
from .optout import ROBOTS_MAX_BYTES, RobotsCache, RobotsRules, is_opted_out, robots_url
from .politeness import HostLimiter
from .retry import backoff_delay, parse_retry_after
from .session import CURRENT_USE, UNCOUNTED, ConnectionUse, open_session
from .shares import NO_SHARES, ShardShares
from .sniff import HEAD_BYTES, describe_non_image, image_extension

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
ROBOTS_REDIRECTS = 5
"""RFC 9309: crawlers should follow at least five redirects to a robots.txt."""


@dataclass(slots=True)
class Download:
    """What happened to one URL. ``body`` is set only when ``status`` is ok; its bytes stay
    charged to the byte budget until ``Fetcher.release`` is called."""

    status: str
    http_status: int | None = None
    detail: str = ""
    attempts: int = 0
    body: bytes | None = None
    content_type: str | None = None
    extension: str | None = None
    elapsed_ms: float = 0.0
    connections_new: int = 0
    connections_reused: int = 0
    charged: int = 0


def parse_http_url(raw: object) -> URL:
    """The URL when ``raw`` is an absolute http(s) URL with a host; FetchFailure otherwise."""
    if not isinstance(raw, str) or not raw.strip():
        raise FetchFailure(Status.BAD_URL, f"empty or non-text URL {raw!r}"[:200])
    try:
        url = URL(raw.strip())
    except (ValueError, TypeError) as exc:
        raise FetchFailure(Status.BAD_URL, f"unparsable URL: {exc}") from exc
    if url.scheme not in ("http", "https"):
        raise FetchFailure(Status.BAD_URL, f"scheme {url.scheme!r} is not http or https")
    if not url.host:
        raise FetchFailure(Status.BAD_URL, "URL has no host")
    return url


class Fetcher:
    """One per daemon process: the warm session plus the limits shared by all its shards."""

    def __init__(self, options: FetchOptions) -> None:
        self.options = options
        self._slots = asyncio.Semaphore(options.concurrency)
        self._host_labels = metrics.BoundedHostLabels()
        self._hosts = HostLimiter(
            options.per_host, options.host_rps, self._host_labels, options.retry_after_max
        )
        self._session = open_session(options, self._hosts.in_use)
        self.budget = ByteBudget(options.max_buffered_bytes)
        self._robots = RobotsCache()
        self._deadlines = Deadlines()

    async def close(self) -> None:
        await self._session.close()

    def release(self, download: Download) -> None:
        """Give the body's bytes back to the budget once they are written (any thread)."""
        if download.charged:
            self.budget.release(download.charged)
            download.charged = 0

    async def fetch(
        self,
        raw_url: object,
        options: FetchOptions | None = None,
        shares: ShardShares = NO_SHARES,
    ) -> Download:
        """Download ``raw_url`` with retries, each attempt within the shard's ``shares`` of the
        job-wide per-host limits. Never raises, except CancelledError."""
        options = options or self.options
        started = time.monotonic()
        download = Download(status=Status.INTERNAL_ERROR)
        try:
            url = parse_http_url(raw_url)
            if options.robots == "obey":
                await self._check_robots(url, options)
            for attempt in range(options.retries + 1):
                download.attempts = attempt + 1
                download.http_status = None
                try:
                    async with shares.slot(url.raw_host or ""):
                        await self._attempt(url, options, download, shares)
                    download.status = Status.OK
                    return download
                except Exception as exc:  # every failure becomes a row status
                    failure = errors.classify_exception(exc)
                download.status = failure.status
                download.detail = failure.detail
                download.http_status = failure.http_status or download.http_status
                if attempt == options.retries or not _retryable(failure):
                    break
                metrics.RETRIES.labels(failure.status).inc()
                await asyncio.sleep(_retry_delay(failure, attempt, options))
        except FetchFailure as failure:  # the URL itself is unusable
            download.status, download.detail = failure.status, failure.detail
        finally:
            download.elapsed_ms = (time.monotonic() - started) * 1000.0
        return download

    async def _attempt(
        self, url: URL, options: FetchOptions, download: Download, shares: ShardShares
    ) -> None:
        async with self._hosts.slot(url.raw_host or ""), self._slots:
            # Paced last: requests held back by the process's limits leave one instant apart.
            await shares.pace(url.raw_host or "")
            metrics.IN_FLIGHT.inc()
            started = time.monotonic()
            try:
                with self._deadlines.limit(options.total_timeout):
                    await self._follow(url, options, download)
            finally:
                metrics.IN_FLIGHT.dec()
                metrics.REQUEST_DURATION.observe(time.monotonic() - started)

    async def _follow(self, url: URL, options: FetchOptions, download: Download) -> None:
        timeout = _client_timeout(options.connect_timeout, options.read_timeout)
        seen = {url}
        for _ in range(options.max_redirects + 1):
            self._check_literal_address(url, options)
            sent = time.monotonic()
            use = ConnectionUse()
            CURRENT_USE.set(use)
            async with self._session.get(url, allow_redirects=False, timeout=timeout) as response:
                _count_connection(use, download)
                metrics.TIME_TO_FIRST_BYTE.observe(time.monotonic() - sent)
                metrics.observe_response(self._host_labels(url.raw_host or ""), response.status)
                download.http_status = response.status
                if response.status in REDIRECT_STATUSES:
                    url = _redirect_target(url, response)
                    if url in seen:
                        raise FetchFailure(Status.REDIRECT_LOOP, f"redirect loop back to {url}")
                    seen.add(url)
                    continue
                if not 200 <= response.status < 300:
                    raise _http_failure(response)
                self._refuse_opted_out(response, options)
                await self._read_image(response, options, download)
                return
        raise FetchFailure(Status.REDIRECT_LOOP, f"more than {options.max_redirects} redirects")

    def _refuse_opted_out(self, response: aiohttp.ClientResponse, options: FetchOptions) -> None:
        """OPTED_OUT, with the connection closed before any body byte is read, when the
        response's X-Robots-Tag headers hold a disallowed directive that applies to ldawt."""
        if not options.disallowed_header_directives:
            return
        offending = is_opted_out(
            response.headers.getall("X-Robots-Tag", ()),
            options.disallowed_header_directives,
            options.user_agent_token,
        )
        if offending is not None:
            response.close()
            raise FetchFailure(
                Status.OPTED_OUT, f"X-Robots-Tag: {offending}"[:300], response.status
            )

    async def _check_robots(self, url: URL, options: FetchOptions) -> None:
        """ROBOTS_DISALLOWED when the origin's robots.txt (loaded once) refuses ``url``."""
        rules = await self._robots.rules(url, lambda: self._load_robots(url, options))
        refusal = rules.refusal(url, AGENT_TOKEN)
        if refusal is not None:
            raise FetchFailure(*refusal)

    async def _load_robots(self, url: URL, options: FetchOptions) -> RobotsRules:
        """The origin's robots.txt, fetched under the host's limits and the address guard;
        RFC 9309 for failures: 4xx -> all allowed, 5xx or unreachable -> all disallowed."""
        try:
            async with self._hosts.slot(url.raw_host or ""), self._slots:
                with self._deadlines.limit(options.total_timeout):
                    return await self._read_robots(robots_url(url), options)
        except Exception as exc:
            failure = errors.classify_exception(exc)
            keep = failure.status in (Status.DNS_ERROR, Status.BLOCKED_ADDRESS, Status.BAD_URL)
            return RobotsRules(
                None,
                unreachable=(
                    failure.detail
                    if failure.status == Status.ROBOTS_DISALLOWED
                    else f"{failure.status}: {failure.detail}"
                )[:300],
                status=failure.status if keep else Status.ROBOTS_DISALLOWED,
            )

    async def _read_robots(self, target: URL, options: FetchOptions) -> RobotsRules:
        timeout = _client_timeout(options.connect_timeout, options.read_timeout)
        for _ in range(ROBOTS_REDIRECTS + 1):
            self._check_literal_address(target, options)
            CURRENT_USE.set(UNCOUNTED)
            async with self._session.get(
                target, allow_redirects=False, timeout=timeout
            ) as response:
                code = response.status
                if code in REDIRECT_STATUSES:
                    target = _redirect_target(target, response)
                    continue
                if 200 <= code < 300:
                    body = bytearray()
                    async for chunk in response.content.iter_any():
                        body += chunk
                        if len(body) >= ROBOTS_MAX_BYTES:
                            response.close()
                            break
                    text = bytes(body[:ROBOTS_MAX_BYTES]).decode("utf-8", errors="replace")
                    return RobotsRules(Protego.parse(text))
                if 400 <= code < 500 and code != 429:
                    return RobotsRules(None)  # no robots.txt: everything allowed
                raise FetchFailure(Status.ROBOTS_DISALLOWED, f"HTTP {code}", code)
        return RobotsRules(None)  # RFC 9309: too many redirects count as no robots.txt

    def _check_literal_address(self, url: URL, options: FetchOptions) -> None:
        refusal = host_refusal(url.host or "", options.allow_private)
        if refusal:
            raise FetchFailure(Status.BLOCKED_ADDRESS, refusal)

    async def _read_image(
        self, response: aiohttp.ClientResponse, options: FetchOptions, download: Download
    ) -> None:
        declared = response.content_length
        encoded = response.headers.get("Content-Encoding", "identity").lower() != "identity"
        if declared is not None and declared > options.max_bytes:
            raise FetchFailure(
                Status.TOO_LARGE, f"Content-Length {declared} > max_bytes {options.max_bytes}"
            )
        if declared is not None and not encoded:
            await self.budget.reserve(declared)
            download.charged = declared
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.content.iter_any():
                size += len(chunk)
                if size > options.max_bytes:
                    raise FetchFailure(
                        Status.TOO_LARGE, f"body passed max_bytes {options.max_bytes}"
                    )
                if size > download.charged:
                    self.budget.charge(size - download.charged)
                    download.charged = size
                chunks.append(chunk)
            if declared is not None and not encoded and size != declared:
                raise FetchFailure(
                    Status.TRUNCATED, f"got {size} of {declared} bytes (Content-Length)"
                )
            body = b"".join(chunks)
            content_type = response.headers.get("Content-Type")
            extension = image_extension(body[:HEAD_BYTES])
            if extension is None:
                raise FetchFailure(
                    Status.NOT_IMAGE, describe_non_image(body, content_type), response.status
                )
        except BaseException:
            self.release(download)
            raise
        finally:
            metrics.DOWNLOAD_BYTES.inc(size)
        download.body = body
        download.content_type = content_type
        download.extension = extension


@functools.lru_cache(maxsize=64)
def _client_timeout(connect: float, read: float) -> aiohttp.ClientTimeout:
    """One timeout object per setting, not one per request."""
    return aiohttp.ClientTimeout(sock_connect=connect, sock_read=read)


def _count_connection(use: ConnectionUse, download: Download) -> None:
    if use.new:
        download.connections_new += use.new
    else:
        download.connections_reused += 1
        metrics.REUSED_CONNECTIONS.inc()


def _retryable(failure: FetchFailure) -> bool:
    if failure.http_status is not None and failure.status.startswith("http_"):
        return failure.http_status in errors.RETRYABLE_HTTP
    return failure.status in errors.RETRYABLE


def _retry_delay(failure: FetchFailure, attempt: int, options: FetchOptions) -> float:
    if failure.retry_after is not None:
        return min(failure.retry_after, options.retry_after_max)
    return backoff_delay(attempt, options.backoff_base, options.backoff_max)


def _http_failure(response: aiohttp.ClientResponse) -> FetchFailure:
    failure = FetchFailure(
        status_for_http(response.status),
        f"HTTP {response.status} {response.reason or ''}".strip(),
        response.status,
    )
    failure.retry_after = parse_retry_after(response.headers.get("Retry-After"))
    return failure


def _redirect_target(url: URL, response: aiohttp.ClientResponse) -> URL:
    location = response.headers.get("Location")
    if not location:
        raise FetchFailure(
            status_for_http(response.status),
            f"HTTP {response.status} without Location",
            response.status,
        )
    target = url.join(URL(location))
    if target.scheme not in ("http", "https") or not target.host:
        raise FetchFailure(Status.BAD_URL, f"redirect to unsupported URL {location!r}"[:200])
    return target
