"""Ask a URL for its size without downloading it: headers only, under the download's rules.

``Prober`` is a ``Fetcher`` whose attempt reads headers instead of the image, so a probe gets
everything a download has: the same warm session and address guard (``session``, ``guard``),
the same per-host and process-wide limits (``politeness``), the same retries, backoff,
Retry-After, timeouts and redirect checks, and the same row statuses (``http_404``,
``timeout``, ``blocked_address``, ...). Per attempt:

1. ``HEAD``. A 2xx answer with a Content-Length (and no Content-Encoding) gives the size.
2. Otherwise, when HEAD is refused (403, 405, 501) or answered without a usable length (none,
   or 0), a ranged ``GET`` for the first byte (``Range: bytes=0-0``): a 206's ``Content-Range:
   bytes 0-0/TOTAL`` gives the size, and its one byte is read so the connection stays warm. A
   server that ignores the range answers 200 with the whole body: its Content-Length is taken
   and the connection closed before any of the body is read.

Any other answer is the row's failure, as a download would record it. A size above
``max_bytes`` is ``too_large``, as the download would abandon it; a size of 0 is ``not_image``,
as the download would find no image in an empty body. An answer that names no size is status
ok with ``size`` None: the caller decides what an unknown size counts as.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

from .. import metrics
from ..contract import Status
from ..runtime import new_event_loop
from .errors import FetchFailure
from .fetch import (
    REDIRECT_STATUSES,
    Download,
    Fetcher,
    _count_connection,
    _http_failure,
    _redirect_target,
)
from .options import FetchOptions
from .session import CURRENT_USE, ConnectionUse

HEAD_REFUSED = frozenset({403, 405, 501})
"""HEAD answers that send the probe on to a ranged GET (servers that refuse the method, and
signed URLs valid for GET only)."""
FIRST_BYTE = {"Range": "bytes=0-0", "Accept-Encoding": "identity"}
HEAD_HEADERS = {"Accept-Encoding": "identity"}
RANGE_BODY_LIMIT = 1024
"""A 206 body read to keep the connection (one byte is asked for); a longer one is closed."""
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:\d+-\d+|\*)\s*/\s*(\d+|\*)\s*$", re.IGNORECASE)


@dataclass(slots=True)
class Probe:
    """What a URL answered. ``status`` is a row status (``contract.Status``); ``size`` is the
    image's size in bytes when ``status`` is ok and the answer named it."""

    status: str
    size: int | None = None
    http_status: int | None = None
    detail: str = ""
    method: str | None = None
    """How the size was learnt: ``HEAD``, ``GET 206`` (Content-Range) or ``GET 200`` (a
    Content-Length of a server that ignored the range)."""
    content_type: str | None = None
    attempts: int = 0
    elapsed_ms: float = 0.0
    requests: dict[str, int] = field(default_factory=dict)
    """Requests sent, by method (redirect hops and retries included)."""


@dataclass(slots=True)
class _State:
    size: int | None = None
    method: str | None = None
    requests: dict[str, int] = field(default_factory=dict)


_CURRENT: contextvars.ContextVar[_State | None] = contextvars.ContextVar(
    "ldawt_probe", default=None
)


class Prober(Fetcher):
    """A ``Fetcher`` that learns sizes from headers (see the module's docstring)."""

    async def probe(self, raw_url: object, options: FetchOptions | None = None) -> Probe:
        """Probe ``raw_url`` with the download's retries and limits. Never raises, except
        CancelledError."""
        state = _State()
        token = _CURRENT.set(state)
        try:
            download = await self.fetch(raw_url, options)
        finally:
            _CURRENT.reset(token)
        ok = download.status == Status.OK
        return Probe(
            status=download.status,
            size=state.size if ok else None,
            http_status=download.http_status,
            detail=download.detail,
            method=state.method if ok else None,
            content_type=download.content_type,
            attempts=download.attempts,
            elapsed_ms=download.elapsed_ms,
            requests=dict(state.requests),
        )

    async def _follow(self, url: URL, options: FetchOptions, download: Download) -> None:
        """One attempt (``Fetcher._attempt`` holds the host's slot and the time limit)."""
        state = _CURRENT.get() or _State()
        state.size = state.method = None
        timeout = aiohttp.ClientTimeout(
            sock_connect=options.connect_timeout, sock_read=options.read_timeout
        )
        url, response = await self._final("HEAD", url, HEAD_HEADERS, options, download, timeout)
        try:
            if 200 <= response.status < 300:
                self._refuse_opted_out(response, options)
                download.content_type = response.headers.get("Content-Type")
                state.size = _plain_length(response)
                state.method = "HEAD"
            elif response.status not in HEAD_REFUSED:
                raise _http_failure(response)
        finally:
            response.release()
        if not state.size:  # none, or a HEAD saying 0: ask where the redirects led for a byte
            await self._first_byte(url, options, download, timeout, state)
        if state.size == 0:  # as the download's sniffing would find the empty body
            raise FetchFailure(Status.NOT_IMAGE, "empty body (size 0)", download.http_status)
        if state.size is not None and state.size > options.max_bytes:
            raise FetchFailure(
                Status.TOO_LARGE, f"size {state.size} > max_bytes {options.max_bytes}"
            )

    async def _first_byte(
        self,
        url: URL,
        options: FetchOptions,
        download: Download,
        timeout: aiohttp.ClientTimeout,
        state: _State,
    ) -> None:
        _, response = await self._final("GET", url, FIRST_BYTE, options, download, timeout)
        try:
            download.content_type = response.headers.get("Content-Type")
            if response.status in (206, 416):  # 416: "bytes */0", an empty resource
                state.size = _range_total(response.headers.get("Content-Range"))
                state.method = "GET 206"
                declared = response.content_length
                if response.status == 206 and declared is not None and declared <= 1:
                    await response.read()  # the one byte asked for: the connection stays warm
                    return
            elif 200 <= response.status < 300:  # the range was ignored: headers, then close
                state.size = _plain_length(response)
                state.method = "GET 200"
            else:
                raise _http_failure(response)
            response.close()
        finally:
            response.release()

    async def _final(
        self,
        method: str,
        url: URL,
        headers: dict[str, str],
        options: FetchOptions,
        download: Download,
        timeout: aiohttp.ClientTimeout,
    ) -> tuple[URL, aiohttp.ClientResponse]:
        """The URL at the end of ``url``'s redirects (checked as a download checks them) and
        its response, whose body is not read: the caller releases or closes it."""
        state = _CURRENT.get()
        seen = {url}
        for _ in range(options.max_redirects + 1):
            self._check_literal_address(url, options)
            use = ConnectionUse()
            CURRENT_USE.set(use)
            if state is not None:
                state.requests[method] = state.requests.get(method, 0) + 1
            response = await self._session.request(
                method, url, headers=headers, allow_redirects=False, timeout=timeout
            )
            _count_connection(use, download)
            metrics.observe_response(self._host_labels(url.host or ""), response.status)
            download.http_status = response.status
            if response.status not in REDIRECT_STATUSES:
                return url, response
            try:
                url = _redirect_target(url, response)
            finally:
                response.release()  # unread: the connection closes if a body was on its way
            if url in seen:
                raise FetchFailure(Status.REDIRECT_LOOP, f"redirect loop back to {url}")
            seen.add(url)
        raise FetchFailure(Status.REDIRECT_LOOP, f"more than {options.max_redirects} redirects")


def _plain_length(response: aiohttp.ClientResponse) -> int | None:
    """The Content-Length of an unencoded answer (an encoded one's is not the image's size)."""
    if response.headers.get("Content-Encoding", "identity").lower() != "identity":
        return None
    return response.content_length


def _range_total(value: str | None) -> int | None:
    """TOTAL from ``Content-Range: bytes 0-0/TOTAL`` (or ``bytes */TOTAL``); None when absent
    or unknown (``/*``)."""
    match = _CONTENT_RANGE.match(value or "")
    if match is None or match.group(1) == "*":
        return None
    return int(match.group(1))


def probe_urls(
    urls: Sequence[object],
    options: FetchOptions,
    done: Callable[[int, Probe], None] | None = None,
) -> list[Probe]:
    """Probe ``urls`` on an event loop of their own (uvloop where available), at most
    ``options.concurrency`` at a time and ``options.per_host`` per host (and ``host_rps``),
    as a worker process downloads a shard; ``done(index, probe)`` is called as each ends.
    Returns the probes in the order of ``urls``."""

    async def run() -> list[Probe]:
        prober = Prober(options)
        probes: list[Probe | None] = [None] * len(urls)
        pending = iter(range(len(urls)))

        async def worker() -> None:
            for index in pending:
                probes[index] = await prober.probe(urls[index])
                if done is not None:
                    done(index, probes[index])

        try:
            workers = min(options.concurrency, len(urls)) or 1
            await asyncio.gather(*(worker() for _ in range(workers)))
        finally:
            await prober.close()
        return [probe for probe in probes if probe is not None]

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(run())
