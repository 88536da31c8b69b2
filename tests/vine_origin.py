"""A loopback image origin in a process of its own, for tests that run a TaskVine manager:
vine_wait holds the GIL while it waits, so an origin served by a thread of the manager's process
would only answer between two waits.

``/img/<name>`` is a small JPEG answered after ``delay_s``; ``/requests`` is the count so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator

from aiohttp import web

from ldawt.manager.demo import serve_in_background
from ldawt.manager.images import make_jpeg

START_TIMEOUT_S = 30


def origin_app(delay_s: float) -> web.Application:
    served = [0]

    async def image(request: web.Request) -> web.Response:
        served[0] += 1
        if delay_s:
            await asyncio.sleep(delay_s)
        return web.Response(body=make_jpeg(request.path, 3000), content_type="image/jpeg")

    async def requests(_request: web.Request) -> web.Response:
        return web.Response(text=str(served[0]))

    app = web.Application()
    app.router.add_get("/img/{name}", image)
    app.router.add_get("/requests", requests)
    return app


@contextlib.contextmanager
def origin_process(delay_s: float = 0.0) -> Iterator[int]:
    """Run the origin in a child process; yields its port on 127.0.0.1."""
    proc = subprocess.Popen(
        [sys.executable, __file__, str(delay_s)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the child prints its port once it listens
        if not line.strip().isdigit():
            raise RuntimeError(f"origin did not start: {line!r}")
        yield int(line)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # the child serves until its stdin closes
        try:
            proc.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    with serve_in_background(origin_app(float(sys.argv[1]))) as port:
        print(port, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
