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
from collections import Counter

from aiohttp import web

from ldawt.manager.images import make_jpeg

PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 64
STALL_SECONDS = 30  # bounded: the server gives up on a stalled client eventually


class FaultOrigin:
    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.app = web.Application()
        self.app.router.add_get("/{tail:.*}", self._handle)

    @staticmethod
    def body(name: str, size: int = 30_000) -> bytes:
        return make_jpeg(name, size)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
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
        if kind == "png":  # a PNG body, served with a misleading type
            return web.Response(body=PNG_HEADER, content_type="application/octet-stream")
        if kind == "redirect":  # /redirect/<n>/<name>: n hops (301 and 302 in turn), the image
            hops = int(rest[0])
            target = f"/redirect/{hops - 1}/{rest[1]}" if hops > 1 else f"/img/{rest[1]}"
            raise (web.HTTPMovedPermanently if hops % 2 else web.HTTPFound)(target)
        if kind == "loop":  # /loop/a <-> /loop/b
            raise web.HTTPFound("/loop/b" if rest[0] == "a" else "/loop/a")
        if kind == "to-metadata":
            raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")
        if kind == "status":  # /status/<code>
            return web.Response(status=int(rest[0]), text="nope")
        if kind == "retry-after":  # /retry-after/<seconds|date>/<name>: 429 once, then the image
            if hits == 1:
                if rest[0] == "date":
                    value = email.utils.formatdate(time.time() + 1, usegmt=True)
                else:
                    value = "1"
                return web.Response(status=429, headers={"Retry-After": value})
            return web.Response(body=self.body(rest[1]), content_type="image/jpeg")
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


def _hang_up(request: web.Request, reset: bool) -> None:
    transport = request.transport
    assert transport is not None
    if reset:  # SO_LINGER 0 makes close() send a TCP RST
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.close()
