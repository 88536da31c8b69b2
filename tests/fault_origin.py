"""A fault-injecting image origin for tests: real HTTP over 127.0.0.1 (aiohttp server).

Each path chooses a behaviour; ``FaultOrigin.body(name)`` gives the exact bytes served for an
image so tests can compare tar members with what the origin sent.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import struct
import time
from collections import Counter, defaultdict

from aiohttp import web

from ldawt.manager.images import make_jpeg

PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 64
OPTOUT_BYTES = 1_000_000
OPTOUT_CHUNK = 16_384
STALL_SECONDS = 30  # bounded: the server gives up on a stalled client eventually
DRIP_SECONDS = 20  # /drip: a body that keeps coming, a little at a time, for this long


class FaultOrigin:
    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.arrivals: defaultdict[str, list[float]] = defaultdict(list)
        """Wall-clock time (``time.time()``) of every request, by path."""
        self.retry_after_dates: dict[str, float] = {}
        """The instant named by each Retry-After HTTP date sent, by path (whole seconds)."""
        self.in_flight = 0
        self.max_in_flight = 0
        self.seen_in_flight: list[tuple[float, int]] = []
        """(``time.time()``, requests in flight with this one) at every request's arrival."""
        self.answered: list[tuple[float, int]] = []
        """(``time.time()``, status) of every 429 and 503 sent by /throttle and /busy."""
        self.throttle_s = 3.0
        self.throttle_retry_after = 2
        self._throttle_start: float | None = None
        self.busy_limit = 4
        self.busy_hold_s = 0.05
        self.user_agents: list[str] = []
        """The User-Agent header of every request, in order."""
        self.cookies: list[str] = []
        """The Cookie header of every request that sent one, in order."""
        self.robots_txt: str | None = None
        """The body of /robots.txt; None: it answers ``robots_status`` (404) instead."""
        self.robots_status = 404
        self.robots_delay = 0.0
        self.sent: Counter[str] = Counter()
        """Body bytes written to the socket, by path (/optout only)."""
        self.closed_early: set[str] = set()
        """Paths (/optout) whose client hung up before the whole body was sent."""
        self.app = web.Application()
        self.app.router.add_get("/{tail:.*}", self._handle)

    def max_in_window(self, seconds: float = 1.0) -> int:
        """The most requests (any path) that arrived within ``seconds`` of one another."""
        return most_in_window([t for arrivals in self.arrivals.values() for t in arrivals], seconds)

    @staticmethod
    def body(name: str, size: int = 30_000) -> bytes:
        return make_jpeg(name, size)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] += 1
        self.user_agents.append(request.headers.get("User-Agent", ""))
        if "Cookie" in request.headers:
            self.cookies.append(request.headers["Cookie"])
        self.arrivals[request.path].append(time.time())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.seen_in_flight.append((time.time(), self.in_flight))
        try:
            return await self._route(request, request.path.strip("/").split("/"))
        finally:
            self.in_flight -= 1

    async def _route(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        kind, rest = parts[0], parts[1:]
        hits = self.hits[request.path]
        if kind == "img":  # /img/<name>[.<ext>]: a JPEG, whatever the URL's extension says
            if request.query.get("slow"):
                await asyncio.sleep(float(request.query["slow"]))
            return web.Response(body=self.body(rest[-1]), content_type="image/jpeg")
        if kind == "robots.txt":
            await asyncio.sleep(self.robots_delay)
            if self.robots_txt is None:
                return web.Response(status=self.robots_status, text="no robots.txt here")
            return web.Response(text=self.robots_txt, content_type="text/plain")
        if kind == "optout":
            # /optout/<name>?h=<X-Robots-Tag value>[&h=...]: one header per ``h``, then a JPEG
            # of OPTOUT_BYTES sent slowly, in small writes, counting what went out
            headers = [("X-Robots-Tag", value) for value in request.query.getall("h", [])]
            response = web.StreamResponse(headers=headers)
            response.content_type = "image/jpeg"
            body = self.body(rest[-1], OPTOUT_BYTES)
            response.content_length = len(body)
            await response.prepare(request)
            try:
                for start in range(0, len(body), OPTOUT_CHUNK):
                    await response.write(body[start : start + OPTOUT_CHUNK])
                    self.sent[request.path] += len(body[start : start + OPTOUT_CHUNK])
                    await asyncio.sleep(0.005)
                await response.write_eof()
            except (ConnectionError, asyncio.CancelledError):
                self.closed_early.add(request.path)
                raise
            return response
        if kind == "png":  # a PNG body, served with a misleading type
            return web.Response(body=PNG_HEADER, content_type="application/octet-stream")
        if kind == "redirect":  # /redirect/<n>/<name>: n hops (301 and 302 in turn), the image
            hops = int(rest[0])
            target = f"/redirect/{hops - 1}/{rest[1]}" if hops > 1 else f"/img/{rest[1]}"
            raise (web.HTTPMovedPermanently if hops % 2 else web.HTTPFound)(target)
        if kind == "cookie":  # /cookie/<name>: sets a cookie and redirects to /img/<name>
            response = web.HTTPFound(f"/img/{rest[0]}")
            response.set_cookie(f"session-{rest[0]}", "1", max_age=3600)
            raise response
        if kind == "loop":  # /loop/a <-> /loop/b
            raise web.HTTPFound("/loop/b" if rest[0] == "a" else "/loop/a")
        if kind == "to-metadata":
            raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")
        if kind == "status":  # /status/<code>
            return web.Response(status=int(rest[0]), text="nope")
        if kind == "retry-after":
            # /retry-after/<seconds|date>/<name>[?code=503&delay=2]: ``code`` (429) once, with
            # Retry-After ``delay`` (1) seconds from now, as a number or as an HTTP date; then
            # the image. An HTTP date has whole seconds: it names a time up to 1 s earlier.
            if hits == 1:
                delay = float(request.query.get("delay", "1"))
                if rest[0] == "date":
                    value = email.utils.formatdate(time.time() + delay, usegmt=True)
                    when = email.utils.parsedate_to_datetime(value).timestamp()
                    self.retry_after_dates[request.path] = when
                else:
                    value = str(int(delay))
                code = int(request.query.get("code", "429"))
                return web.Response(status=code, headers={"Retry-After": value})
            return web.Response(body=self.body(rest[1]), content_type="image/jpeg")
        if kind == "throttle":
            # /throttle/<name>: 429 with Retry-After ``throttle_retry_after`` to every request
            # during the ``throttle_s`` seconds from the first /throttle request; then the image
            now = time.time()
            self._throttle_start = self._throttle_start or now
            if now - self._throttle_start < self.throttle_s:
                self.answered.append((now, 429))
                headers = {"Retry-After": str(self.throttle_retry_after)}
                return web.Response(status=429, headers=headers)
            return web.Response(body=self.body(rest[0]), content_type="image/jpeg")
        if kind == "busy":
            # /busy/<name>: 503 (no Retry-After) when more than ``busy_limit`` requests are in
            # flight with this one, else the image after ``busy_hold_s``
            if self.in_flight > self.busy_limit:
                self.answered.append((time.time(), 503))
                return web.Response(status=503, text="too busy")
            await asyncio.sleep(self.busy_hold_s)
            return web.Response(body=self.body(rest[0]), content_type="image/jpeg")
        if kind == "flaky":  # /flaky/<code>/<failures>/<name>
            if hits <= int(rest[1]):
                return web.Response(status=int(rest[0]), text="try later")
            return web.Response(body=self.body(rest[2]), content_type="image/jpeg")
        if kind == "stall":  # headers and a little body, then silence
            response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            response.content_length = 50_000
            await response.prepare(request)
            await response.write(self.body("stall")[:1000])
            await asyncio.sleep(STALL_SECONDS)
            return response
        if kind == "drip":  # never silent for long, done only after DRIP_SECONDS
            response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            drops = int(DRIP_SECONDS / 0.2)
            response.content_length = 1000 * drops
            await response.prepare(request)
            for _ in range(drops):
                await response.write(b"\0" * 1000)
                await asyncio.sleep(0.2)
            return response
        if kind == "huge":  # /huge/<cl|chunked>: more bytes than the test's max_bytes
            big = self.body("huge", 400_000)
            if rest[0] == "cl":
                return web.Response(body=big, content_type="image/jpeg")
            response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(big), 16_384):
                await response.write(big[start : start + 16_384])
            await response.write_eof()
            return response
        if kind == "truncated":  # promises 30,000 bytes, sends 10,000, hangs up
            response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            response.content_length = 30_000
            await response.prepare(request)
            await response.write(self.body("truncated")[:10_000])
            await asyncio.sleep(0.05)
            _hang_up(request, reset=False)
            return response
        if kind == "html":
            return web.Response(
                text="<!doctype html><title>login</title>", content_type="text/html"
            )
        if kind == "reset":  # the connection is reset before any response
            _hang_up(request, reset=True)
            await asyncio.sleep(0.05)
            return web.Response()
        raise web.HTTPNotFound()


def most_in_window(times: list[float], seconds: float) -> int:
    """The most of ``times`` within ``seconds`` of one another."""
    times = sorted(times)
    most, first = 0, 0
    for last, when in enumerate(times):
        while when - times[first] >= seconds:
            first += 1
        most = max(most, last - first + 1)
    return most


def _hang_up(request: web.Request, reset: bool) -> None:
    transport = request.transport
    assert transport is not None
    if reset:  # SO_LINGER 0 makes close() send a TCP RST
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.close()
